"""Retention: finished runs older than the limit are exported to JSONL files and trimmed from Redis; the
API, the console and `routines export` still read them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from redis import asyncio as aioredis

from app.core.config import Settings
from app.core.domain import Event, Run, RunState, Trigger
from app.store.archive import RunArchive, archive_old_runs, read_jsonl, run_events
from app.store.runs import RedisStore
from app.testing.serve import serve_in_thread
from app.web.app import create_app

DAY = 86400.0
NOW = 1_800_000_000.0


async def make(store: RedisStore, run_id: str, age_days: float, state: RunState) -> Run:
    run = Run(id=run_id, routine="nightly", repo="acme/api", trigger=Trigger("schedule"))
    run.created_at = NOW - age_days * DAY
    await store.create_run(run)
    for n in range(3):
        await store.append_event(run_id, Event("log", {"n": n}))
    if state is not RunState.QUEUED:
        await store.transition(run_id, RunState.PREPARING)
        await store.transition(run_id, RunState.RUNNING)
        if state is not RunState.RUNNING:
            await store.transition(run_id, RunState.FINISHING)
            await store.transition(run_id, state, error="boom" if state is RunState.FAILED else None)
    return await store.get_run(run_id)


async def test_old_finished_runs_are_exported_and_trimmed_once(aredis: aioredis.Redis, tmp_path: Path) -> None:
    store, archive = RedisStore(aredis), RunArchive(tmp_path / "archive")
    old = await make(store, "old-done", 40, RunState.FAILED)
    await make(store, "old-live", 40, RunState.RUNNING)
    await make(store, "new-done", 2, RunState.SUCCEEDED)
    events_before = [e.to_json() for e in await store.events("old-done")]

    assert await archive_old_runs(store, archive, days=30, now=NOW) == 1
    assert await archive_old_runs(store, archive, days=30, now=NOW) == 0, "nothing twice"

    archived = await store.get_run("old-done")
    path = Path(archived.archived or "")
    assert path == tmp_path / "archive" / "2026" / "12" / "old-done.jsonl"
    assert not await aredis.exists("routines:events:old-done"), "the events left Redis"
    assert (archived.state, archived.updated_at, archived.error) == (old.state, old.updated_at, "boom")
    run, events = read_jsonl(path)
    assert run.id == "old-done" and [e.to_json() for e in events] == events_before
    assert [e.to_json() for e in await run_events(store, archived)] == events_before
    assert (await store.get_run("old-live")).archived is None and await aredis.exists("routines:events:old-live")
    assert (await store.get_run("new-done")).archived is None
    page, _ = await store.page_runs(limit=10)
    assert {r.id for r in page} == {"old-done", "old-live", "new-done"}, "the run is still listed"
    assert not list(path.parent.glob(".*.part")), "no half-written file is left"


def test_the_api_and_the_console_read_an_archived_run(redis_url: str, tmp_path: Path) -> None:
    async def prepare() -> None:
        store = RedisStore(aioredis.Redis.from_url(redis_url))
        await make(store, "gone", 40, RunState.SUCCEEDED)
        await archive_old_runs(store, RunArchive(tmp_path / "archive"), days=30, now=NOW)
        await store.redis.aclose()

    asyncio.run(prepare())
    (tmp_path / "routines").mkdir()
    settings = Settings(redis_url=redis_url, routines_dir=tmp_path / "routines", data_dir=tmp_path / "data")
    with serve_in_thread(create_app(settings)) as served, httpx.Client(base_url=served.url) as client:
        as_json = client.get("/api/runs/gone/events", headers={"accept": "application/json"}).json()
        kinds = [e["type"] for e in as_json["events"]]
        assert kinds == ["run.state", "log", "log", "log", "run.state", "run.state", "run.state", "run.state"]
        stream = client.get("/api/runs/gone/events").text
        assert stream.count('data: {"id"') == 8 and stream.endswith("event: end\ndata: {}\n\n")
        later = client.get(f"/api/runs/gone/events?format=json&after={as_json['events'][3]['id']}").json()
        assert len(later["events"]) == 4
        page = client.get("/runs/gone")
        assert page.status_code == 200 and "archived" in page.text
    (tmp_path / "archive").rename(tmp_path / "moved")
    with serve_in_thread(create_app(settings)) as served, httpx.Client(base_url=served.url) as client:
        lost = client.get("/api/runs/gone/events?format=json")
        assert lost.status_code == 410 and "ROUTINES_ARCHIVE_DIR" in lost.json()["error"]
    [moved] = (tmp_path / "moved").rglob("gone.jsonl")
    assert json.loads(moved.read_text().splitlines()[0])["run"]["id"] == "gone"
