"""Pause, resume and archive over HTTP on a real web server and Redis; refusals are visible."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.domain import Run, RunState, Trigger
from app.lifecycle import Refused
from app.testing.serve import serve_in_thread
from app.web import routines_api
from app.web.app import create_app

TOKEN = "admin-token-for-tests"


@pytest.fixture
def web(tmp_path: Path, redis_url: str) -> Iterator[httpx.Client]:
    folder = tmp_path / "routines"
    folder.mkdir()
    (folder / "docs.md").write_text("---\nname: docs\nrepo: acme/docs\non:\n  api: true\n---\nCheck the docs.\n")
    settings = Settings(redis_url=redis_url, routines_dir=folder, data_dir=tmp_path / "data", api_token=TOKEN)
    app = create_app(settings)
    app.router.routes[:0] = routines_api.routes
    with serve_in_thread(app) as served:
        yield httpx.Client(base_url=served.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)


def test_pause_resume_and_archive_change_the_state(web: httpx.Client) -> None:
    paused = web.post("/api/routines/docs/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused" and paused.json()["by"] == "api"
    assert web.post("/api/routines/docs/resume").json()["state"] == "active"
    assert web.post("/api/routines/docs/archive").json()["state"] == "archived"


def test_changing_state_needs_the_admin_token_and_a_known_routine(web: httpx.Client) -> None:
    assert web.post("/api/routines/docs/pause", headers={"authorization": "Bearer nope"}).status_code == 401
    assert web.post("/api/routines/docs/pause", headers={"authorization": ""}).status_code == 401
    missing = web.post("/api/routines/nope/pause")
    assert missing.status_code == 404 and "known routines: docs" in missing.json()["error"]


def test_a_fire_while_paused_is_recorded_as_a_cancelled_run_naming_the_pause(web: httpx.Client) -> None:
    web.post("/api/routines/docs/pause")
    fired = web.post("/api/routines/docs/fire", json={"text": "now"})
    run = web.get(f"/api/runs/{fired.json()['run_id']}").json()
    assert run["state"] == "cancelled" and "is paused" in run["error"] and "routines resume docs" in run["error"]
    events = web.get(f"/api/runs/{run['id']}/events", headers={"accept": "application/json"}).json()["events"]
    assert [e["data"]["limit"] for e in events if e["type"] == "run.refused"] == ["paused"]


def test_a_refusal_answers_its_status_with_the_limit_and_the_run() -> None:
    exc = Refused("runs_per_day", 429, "routine 'docs' reached limits.runs_per_day")
    exc.run = Run(id="r1", routine="docs", repo="acme/docs", trigger=Trigger("api"), state=RunState.CANCELLED)
    reply = routines_api.refusal(exc)
    assert reply.status_code == 429
    assert reply.body == (
        b'{"error":"routine \'docs\' reached limits.runs_per_day","limit":"runs_per_day",'
        b'"run_id":"r1","state":"cancelled"}'
    )
