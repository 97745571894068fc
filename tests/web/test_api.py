"""The HTTP API over a real web server and Redis (no worker: runs stay queued unless the test moves them)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import asyncio as aioredis

from app.core.config import Settings
from app.core.domain import Event, RunState
from app.store.runs import RedisStore
from app.testing.serve import serve_in_thread
from app.testing.stack import API_TOKEN, Stack, running_stack
from app.web.app import create_app


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    folder = tmp_path / "routines"
    folder.mkdir()
    (folder / "docs.md").write_text("---\nname: docs\nrepo: acme/docs\n---\nCheck the docs.\n")
    (folder / "nightly.md").write_text(
        '---\nname: nightly\nrepo: acme/api\non:\n  schedule:\n    - cron: "0 2 * * *"\n---\nFix a bug.\n'
    )
    (folder / "broken.md").write_text("---\nname: broken\n---\nNo repo.\n")
    with running_stack(tmp_path, redis_url, routines_dir=folder, worker=False) as s:
        yield s


def test_routines_listed_with_refused_files(stack: Stack) -> None:
    body = stack.get("/api/routines").json()
    assert sorted(r["name"] for r in body["routines"]) == ["docs", "nightly"]
    assert len(body["errors"]) == 1 and "broken.md:" in body["errors"][0] and "repo" in body["errors"][0]


def test_fire_needs_the_api_trigger(stack: Stack) -> None:
    reply = stack.fire("nightly")
    assert reply.status_code == 422 and "api: true" in reply.json()["error"]


def test_fire_validates_the_body(stack: Stack) -> None:
    assert stack.client.post(
        f"{stack.web_url}/api/routines/docs/fire", json=["x"], headers={"authorization": f"Bearer {API_TOKEN}"}
    ).json() == {"error": 'body must be a JSON object such as {"text": "..."}'}
    assert stack.fire("docs", text="x" * 20_001).status_code == 422


def test_reads_need_the_admin_token(stack: Stack) -> None:
    assert stack.client.get(f"{stack.web_url}/api/runs").status_code == 401
    assert stack.client.get(f"{stack.web_url}/api/runs", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert stack.get("/api/runs").status_code == 200


def test_runs_newest_first_filtered_and_paginated(stack: Stack) -> None:
    ids = [stack.fire("docs", text=str(i)).json()["run_id"] for i in range(5)]
    first = stack.get("/api/runs?limit=2").json()
    assert [r["id"] for r in first["runs"]] == ids[::-1][:2]
    second = stack.get(first["next"]).json()
    third = stack.get(second["next"]).json()
    assert [r["id"] for r in first["runs"] + second["runs"] + third["runs"]] == ids[::-1]
    assert stack.get("/api/runs?state=queued&routine=docs").json()["runs"][0]["state"] == "queued"
    assert stack.get("/api/runs?routine=nightly").json()["runs"] == []
    assert stack.get("/api/runs?state=bogus").status_code == 422
    run = stack.get(f"/api/runs/{ids[0]}").json()
    assert run["trigger"] == {"kind": "api", "text": "0", "actor": "api", "data": {}}
    assert run["pull_request"] is None and run["cost_usd"] == 0.0 and run["error"] is None


async def test_events_stream_live_over_sse(stack: Stack) -> None:
    run_id = stack.fire("docs").json()["run_id"]
    store = RedisStore(aioredis.Redis.from_url(stack.settings.redis_url or ""))
    received: list[dict[str, object]] = []
    first = asyncio.Event()

    async def listen() -> None:
        headers = {"authorization": f"Bearer {API_TOKEN}"}
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream("GET", f"{stack.web_url}/api/runs/{run_id}/events", headers=headers) as reply,
        ):
            assert reply.headers["content-type"].startswith("text/event-stream")
            async for line in reply.aiter_lines():
                if line.startswith("data: ") and line != "data: {}":
                    received.append(json.loads(line[6:]))
                    first.set()

    task = asyncio.create_task(listen())
    await asyncio.wait_for(first.wait(), timeout=10)
    assert [e["type"] for e in received] == ["run.state"] and not task.done()  # the past, then it stays open
    await store.append_event(run_id, Event("log", {"message": "working"}))
    await store.transition(run_id, RunState.PREPARING)
    await store.transition(run_id, RunState.FAILED, error="stopped by the test")
    await asyncio.wait_for(task, timeout=10)
    await store.redis.aclose()
    assert [e["type"] for e in received] == ["run.state", "log", "run.state", "run.state"]
    assert received[-1]["data"] == {"state": "failed", "error": "stopped by the test"}
    as_json = stack.get(f"/api/runs/{run_id}/events", headers={"accept": "application/json"}).json()
    assert [e["id"] for e in as_json["events"]] == [e["id"] for e in received]


def test_dead_redis_answers_503_with_a_reason(tmp_path: Path) -> None:
    folder = tmp_path / "routines"
    folder.mkdir()
    (folder / "docs.md").write_text("---\nname: docs\nrepo: acme/docs\n---\nCheck the docs.\n")
    settings = Settings(redis_url="redis://127.0.0.1:1/0", routines_dir=folder, api_token=API_TOKEN)
    with serve_in_thread(create_app(settings)) as web:
        health = httpx.get(f"{web.url}/healthz")
        assert health.status_code == 503 and "Redis" in health.json()["redis"]
        fired = httpx.post(f"{web.url}/api/routines/docs/fire", headers={"authorization": f"Bearer {API_TOKEN}"})
        assert fired.status_code == 503 and "Redis" in fired.json()["error"]
        assert fired.headers["retry-after"] == "5"


def test_secrets_go_in_over_http_and_never_come_out(tmp_path: Path, redis_url: str) -> None:
    folder = tmp_path / "routines"
    folder.mkdir()
    value = "xoxb-http-secret-value-0123456789"
    with running_stack(tmp_path, redis_url, routines_dir=folder, worker=False, secret_key="k" * 40) as s:
        url = f"{s.web_url}/api/secrets/SLACK_TOKEN"
        headers = {"authorization": f"Bearer {API_TOKEN}"}
        assert s.client.put(url, json={"value": value, "domains": ["slack.com"]}).status_code == 401
        put = s.client.put(url, json={"value": value, "domains": ["slack.com"]}, headers=headers)
        assert put.status_code == 200 and put.json()["domains"] == ["slack.com"]
        bad = s.client.put(f"{s.web_url}/api/secrets/lower", json={"value": "x", "domains": ["a.com"]}, headers=headers)
        assert bad.status_code == 422
        listed = s.get("/api/secrets")
        assert [i["name"] for i in listed.json()["secrets"]] == ["SLACK_TOKEN"] and value not in listed.text
        assert s.client.delete(url, headers=headers).status_code == 204
        assert s.client.delete(url, headers=headers).status_code == 404
