"""Pause, resume and archive over HTTP on a real web server and Redis; refusals are visible."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import asyncio as aioredis

from app.core.config import Settings
from app.core.domain import Run, RunState, Trigger
from app.core.errors import Refused
from app.routines.catalog import ApiRoutines, RoutineCatalog
from app.store.runs import RedisStore
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


def test_the_listing_shows_each_routines_state_and_runs_today(web: httpx.Client) -> None:
    assert web.post("/api/routines/docs/fire", json={"text": "now"}).status_code == 202
    web.post("/api/routines/docs/pause")
    [docs] = web.get("/api/routines").json()["routines"]
    assert (docs["state"], docs["by"], docs["runs_today"], docs["runs_per_day"]) == ("paused", "api", 1, None)
    assert isinstance(docs["since"], float)


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


NIGHTLY = "---\nname: nightly\nrepo: acme/api\non:\n  api: true\n  schedule: [{cron: '0 2 * * *'}]\n---\nFix one bug.\n"


def test_a_routine_created_through_the_api_is_listed_fired_changed_and_deleted(web: httpx.Client) -> None:
    created = web.put("/api/routines/nightly", content=NIGHTLY)
    assert created.status_code == 201 and created.json()["created"] is True
    listed = {r["name"]: r for r in web.get("/api/routines").json()["routines"]}
    assert set(listed) == {"docs", "nightly"} and listed["nightly"]["source"] == "api:nightly"
    fired = web.post("/api/routines/nightly/fire", json={"text": "now"})
    assert fired.status_code == 202
    changed = web.put("/api/routines/nightly", content=NIGHTLY.replace("Fix one bug.", "Fix two bugs."))
    assert changed.status_code == 200 and changed.json()["created"] is False
    assert web.delete("/api/routines/nightly").json() == {"name": "nightly", "deleted": True}
    assert web.post("/api/routines/nightly/fire", json={}).status_code == 404
    assert web.delete("/api/routines/nightly").status_code == 404


def test_a_routine_token_ends_with_its_routine_and_with_its_repositories(web: httpx.Client, redis_url: str) -> None:
    """A fire token names a routine: the same name made again after a delete, or changed to other
    repositories, is not the routine the token was given for."""

    def token(repos: tuple[str, ...]) -> str:
        async def mint() -> str:
            client = aioredis.Redis.from_url(redis_url)
            try:
                return await RedisStore(client).new_routine_token("nightly", repos)
            finally:
                await client.aclose()

        return asyncio.run(mint())

    def fire(with_token: str) -> int:
        return web.post(
            "/api/routines/nightly/fire", json={}, headers={"authorization": f"Bearer {with_token}"}
        ).status_code

    assert web.put("/api/routines/nightly", content=NIGHTLY).status_code == 201
    old = token(("acme/api",))
    assert fire(old) == 202
    assert web.delete("/api/routines/nightly").status_code == 200
    assert web.put("/api/routines/nightly", content=NIGHTLY).status_code == 201
    assert fire(old) == 401, "deleting the routine dropped its token"
    again = token(("ACME/api",))
    assert fire(again) == 202, "the repositories are compared without case"
    moved = NIGHTLY.replace("repo: acme/api", "repo: [acme/api, acme/secret]")
    assert web.put("/api/routines/nightly", content=moved).status_code == 200
    assert fire(again) == 401, "a routine changed to other repositories needs a new token"


@pytest.mark.parametrize(
    ("name", "text", "status", "reason"),
    [
        ("nightly", NIGHTLY.replace("repo: acme/api", "repo: 12"), 400, "api:nightly:3:"),
        ("other", NIGHTLY, 400, "named 'nightly' but was sent to /api/routines/other"),
        ("docs", NIGHTLY.replace("nightly", "docs"), 409, "docs.md; change the file"),
        ("nightly", NIGHTLY.replace("0 2 * * *", "* * * * *"), 400, "api:nightly"),
    ],
)
def test_a_wrong_routine_is_refused_with_where_and_how_to_fix(
    web: httpx.Client, name: str, text: str, status: int, reason: str
) -> None:
    answer = web.put(f"/api/routines/{name}", content=text)
    assert answer.status_code == status and reason in answer.json()["error"], answer.text
    assert web.put("/api/routines/nightly", content=b"\xff\xfe", headers={}).status_code == 400
    assert web.delete("/api/routines/docs").status_code == 409


def test_changing_routines_needs_the_admin_token(web: httpx.Client) -> None:
    assert web.put("/api/routines/nightly", content=NIGHTLY, headers={"authorization": "Bearer no"}).status_code == 401
    assert web.delete("/api/routines/nightly", headers={"authorization": ""}).status_code == 401


async def test_every_process_sees_an_api_routine_without_a_restart(tmp_path: Path, aredis: Any) -> None:
    here, there = RoutineCatalog(tmp_path / "none"), RoutineCatalog(tmp_path / "none")
    writer, reader = ApiRoutines(aredis, "routines:"), ApiRoutines(aredis, "routines:")
    await reader.refresh(there)
    assert there.all() == {}
    await writer.put("nightly", NIGHTLY)
    await reader.refresh(there)
    assert there.get("nightly").prompt.strip() == "Fix one bug."
    await writer.put("nightly", NIGHTLY.replace("Fix one bug.", "Fix two bugs."))
    await reader.refresh(there)
    assert there.get("nightly").prompt.strip() == "Fix two bugs."
    await writer.delete("nightly")
    await reader.refresh(there)
    await writer.refresh(here)
    assert there.all() == {} and here.all() == {}
