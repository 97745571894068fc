"""`/setup`: the GitHub App manifest flow against the test GitHub, end to end over HTTP, for the operator only."""

from __future__ import annotations

import html
import json
import logging
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.core.config import Settings
from app.testing.github_server import GitHubState
from app.testing.github_server import create_app as github_app
from app.testing.serve import free_port, serve_in_thread
from app.web import setup
from app.web.app import create_app
from tests.support.paths import ROOT

ADMIN = "admin-token-for-setup-tests"


@dataclass
class Setup:
    web: httpx.Client
    github: GitHubState
    settings: Settings
    link: str

    def browser(self) -> httpx.Client:
        """Another browser: its own cookies."""
        return httpx.Client(base_url=self.settings.public_url, timeout=10)


@pytest.fixture
def flow(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[Setup]:
    monkeypatch.chdir(ROOT)  # where app.yml is, as in a checkout or the image
    caplog.set_level(logging.WARNING, logger="app.web")
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
            api_token=ADMIN,
        )
        app = create_app(settings)
        app.router.routes[:0] = setup.routes
        with serve_in_thread(app, port=port):
            printed = [r.getMessage() for r in caplog.records if "setup link" in r.getMessage()]
            link = re.search(r"(http://\S+/setup\?key=\S+)", printed[0])[1]  # type: ignore[index]
            yield Setup(httpx.Client(base_url=settings.public_url, timeout=10), github, settings, link)


def start(flow: Setup, client: httpx.Client | None = None) -> tuple[str, dict[str, Any]]:
    """Open the printed link in `client` (a browser): the form for GitHub, with the session cookie set."""
    page = (client or flow.web).get(flow.link, follow_redirects=True)
    assert page.status_code == 200, page.text
    assert "key=" not in str(page.url), "the key leaves the address bar"
    return form_of(page.text)


def via_github(client: httpx.Client, action: str, manifest: dict[str, Any]) -> httpx.Response:
    """The browser posts the manifest to GitHub, which sends it back to /setup/done."""
    return client.post(action, data={"manifest": json.dumps(manifest)}, follow_redirects=True)


def form_of(page: str) -> tuple[str, dict[str, Any]]:
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page)[1])  # type: ignore[index]
    value = html.unescape(re.search(r'name="manifest" value="([^"]+)"', page)[1])  # type: ignore[index]
    return action, json.loads(value)


def test_the_manifest_flow_creates_the_app_and_stores_its_secrets_privately(flow: Setup) -> None:
    action, manifest = start(flow)
    assert action.startswith(f"{flow.github.base_url}/settings/apps/new?state=")
    shipped = yaml.safe_load((ROOT / "app.yml").read_text())
    assert manifest["default_events"] == shipped["default_events"]
    assert manifest["default_permissions"] == shipped["default_permissions"]
    assert manifest["hook_attributes"]["url"] == f"{flow.settings.public_url}/webhooks/github"
    assert manifest["redirect_url"] == f"{flow.settings.public_url}/setup/done"

    done = via_github(flow.web, action, manifest)

    assert done.status_code == 200, done.text
    saved = json.loads((flow.settings.data_dir / "github-app.json").read_text())
    pem = flow.settings.data_dir / "github-app.pem"
    assert saved["id"] == flow.github.app_id and pem.read_text() == flow.github.private_key
    for path in (pem, flow.settings.data_dir / "github-app.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"GITHUB_APP_ID={flow.github.app_id}" in done.text and f"GITHUB_APP_PRIVATE_KEY_PATH={pem}" in done.text
    assert saved["webhook_secret"] not in done.text and "PRIVATE KEY" not in done.text
    again = flow.web.get("/setup")
    assert again.status_code == 409 and "<form" not in again.text and "already connected" in again.text
    assert flow.browser().get(flow.link).status_code == 409, "done once: the link offers nothing any more"


def test_the_link_works_once(flow: Setup) -> None:
    start(flow)
    assert flow.browser().get(flow.link).status_code == 403, "another browser cannot reuse the link"
    assert flow.web.get("/setup").status_code == 200, "the browser that opened it keeps its session"


def test_without_the_link_setup_offers_nothing(flow: Setup) -> None:
    stranger = flow.browser()
    for path in ("/setup", "/setup?key=guessed", "/setup/done?code=abc&state=xyz", "/setup?org=acme"):
        reply = stranger.get(path)
        assert reply.status_code == 403 and "<form" not in reply.text, path
        assert "setup link" in reply.text
    wrong_admin = stranger.get("/setup", headers={"authorization": "Bearer not-the-token"})
    assert wrong_admin.status_code == 403
    assert not (flow.settings.data_dir / "github-app.json").exists()


def test_the_session_cookie_is_httponly_samesite_and_scoped(flow: Setup) -> None:
    opened = flow.browser().get(flow.link)
    assert opened.status_code == 303 and opened.headers["location"] == "/setup"
    cookie = opened.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/setup" in cookie and "max-age=3600" in cookie
    assert opened.headers["referrer-policy"] == "no-referrer"


def test_the_admin_token_starts_a_session_too(flow: Setup) -> None:
    client = flow.browser()
    opened = client.get("/setup", headers={"authorization": f"Bearer {ADMIN}"}, follow_redirects=True)
    assert opened.status_code == 200 and "<form" in opened.text


def test_a_return_to_another_browser_or_with_a_forged_state_is_refused(flow: Setup) -> None:
    action, manifest = start(flow)
    forged = action.split("?")[0] + "?state=forged"
    reply = via_github(flow.web, forged, manifest)
    assert reply.status_code == 400 and "start again" in reply.text
    other = flow.browser()
    other.get("/setup", headers={"authorization": f"Bearer {ADMIN}"})  # a session of its own, not this state's
    assert via_github(other, action, manifest).status_code == 400
    assert via_github(flow.browser(), action, manifest).status_code == 403, "no session at all"
    assert not (flow.settings.data_dir / "github-app.json").exists()


def test_a_used_code_is_refused_by_github(flow: Setup) -> None:
    action, manifest = start(flow)
    sent = httpx.post(action, data={"manifest": json.dumps(manifest)}, timeout=10)
    code = re.search(r"code=([^&]+)", sent.headers["location"])[1]  # type: ignore[index]
    assert httpx.post(f"{flow.github.base_url}/app-manifests/{code}/conversions").status_code == 201
    assert httpx.post(f"{flow.github.base_url}/app-manifests/{code}/conversions").status_code == 404


def test_the_web_url_is_derived_from_the_api_url() -> None:
    assert setup.github_web_url("https://api.github.com") == "https://github.com"
    assert setup.github_web_url("https://ghe.example.com/api/v3/") == "https://ghe.example.com"
    assert setup.github_web_url("http://127.0.0.1:8123") == "http://127.0.0.1:8123"
