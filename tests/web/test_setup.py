"""`/setup`: the GitHub App manifest flow against the test GitHub, end to end over HTTP."""

from __future__ import annotations

import html
import json
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.config import Settings
from app.testing.github_server import GitHubState
from app.testing.github_server import create_app as github_app
from app.testing.serve import free_port, serve_in_thread
from app.web import setup
from app.web.app import create_app

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Setup:
    web: httpx.Client
    github: GitHubState
    settings: Settings


@pytest.fixture
def flow(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    monkeypatch.chdir(ROOT)  # where app.yml is, as in a checkout or the image
    github = GitHubState(tmp_path / "github")
    with serve_in_thread(github_app(github)) as gh:
        github.base_url = gh.url
        port = free_port()
        settings = Settings(
            redis_url=redis_url,
            github_api_url=gh.url,
            routines_dir=ROOT / "routines",
            data_dir=tmp_path / "data",
            public_url=f"http://127.0.0.1:{port}",
        )
        app = create_app(settings)
        app.router.routes[:0] = setup.routes
        with serve_in_thread(app, port=port):
            yield Setup(httpx.Client(base_url=settings.public_url, timeout=10), github, settings)


def form_of(page: str) -> tuple[str, dict[str, Any]]:
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page)[1])  # type: ignore[index]
    value = html.unescape(re.search(r'name="manifest" value="([^"]+)"', page)[1])  # type: ignore[index]
    return action, json.loads(value)


def test_the_manifest_flow_creates_the_app_and_stores_its_secrets_privately(flow: Setup) -> None:
    page = flow.web.get("/setup")
    assert page.status_code == 200
    action, manifest = form_of(page.text)
    assert action.startswith(f"{flow.github.base_url}/settings/apps/new?state=")
    shipped = yaml.safe_load((ROOT / "app.yml").read_text())
    assert manifest["default_events"] == shipped["default_events"]
    assert manifest["default_permissions"] == shipped["default_permissions"]
    assert manifest["hook_attributes"]["url"] == f"{flow.settings.public_url}/webhooks/github"
    assert manifest["redirect_url"] == f"{flow.settings.public_url}/setup/done"

    done = httpx.post(action, data={"manifest": json.dumps(manifest)}, follow_redirects=True, timeout=10)

    assert done.status_code == 200, done.text
    saved = json.loads((flow.settings.data_dir / "github-app.json").read_text())
    pem = flow.settings.data_dir / "github-app.pem"
    assert saved["id"] == flow.github.app_id and pem.read_text() == flow.github.private_key
    for path in (pem, flow.settings.data_dir / "github-app.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"GITHUB_APP_ID={flow.github.app_id}" in done.text and f"GITHUB_APP_PRIVATE_KEY_PATH={pem}" in done.text
    assert saved["webhook_secret"] not in done.text and "PRIVATE KEY" not in done.text
    assert flow.web.get("/setup").status_code == 409  # done once; the stored key is never overwritten


def test_a_return_without_a_state_started_here_is_refused(flow: Setup) -> None:
    action, manifest = form_of(flow.web.get("/setup").text)
    forged = action.split("?")[0] + "?state=forged"
    reply = httpx.post(forged, data={"manifest": json.dumps(manifest)}, follow_redirects=True, timeout=10)
    assert reply.status_code == 400 and "start again" in reply.text
    assert not (flow.settings.data_dir / "github-app.json").exists()


def test_a_used_code_is_refused_by_github(flow: Setup) -> None:
    action, manifest = form_of(flow.web.get("/setup").text)
    sent = httpx.post(action, data={"manifest": json.dumps(manifest)}, timeout=10)
    code = re.search(r"code=([^&]+)", sent.headers["location"])[1]  # type: ignore[index]
    assert httpx.post(f"{flow.github.base_url}/app-manifests/{code}/conversions").status_code == 201
    assert httpx.post(f"{flow.github.base_url}/app-manifests/{code}/conversions").status_code == 404


def test_the_web_url_is_derived_from_the_api_url() -> None:
    assert setup.github_web_url("https://api.github.com") == "https://github.com"
    assert setup.github_web_url("https://ghe.example.com/api/v3/") == "https://ghe.example.com"
    assert setup.github_web_url("http://127.0.0.1:8123") == "http://127.0.0.1:8123"
