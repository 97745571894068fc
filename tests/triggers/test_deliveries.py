"""Deliveries: claimed once, stored raw, handled by the worker, acknowledged on the test GitHub."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis import asyncio as aioredis

from app.core.domain import PullRequest, Run, RunState
from app.core.errors import StoreError
from app.forge.github import GitHubForge
from app.routines.files import parse_routine
from app.store import queue
from app.store.delivery_log import DeliveryLog, DeliveryRecord
from app.store.runs import RedisStore
from app.testing.github_shapes import add_comment
from app.testing.webhook_stack import HookStack, webhook_stack
from app.triggers.deliveries import DeliveryDeps, process_delivery
from app.triggers.intake import (
    DELIVERY_JOB,
    GROUP,
    STREAM,
    DeliveryIntake,
    DeliveryPump,
    Intake,
    body_claim_key,
    claim_key,
    enqueue_delivery,
    unpack_payload,
)
from app.triggers.tracking import tracking_key, update_tracking_comment
from tests.support.paths import PAYLOADS


def routine_text(name: str, on_github: str) -> str:
    return f'---\nname: {name}\nrepo: "*"\non:\n  github:\n    {on_github}\n---\nDo it.\n'


@pytest.fixture
def hooks(tmp_path: Path, redis_url: str) -> Iterator[HookStack]:
    routines = tmp_path / "routines"
    routines.mkdir()
    (routines / "triage.md").write_text(routine_text("triage", "issue_comment: {mention: '@routines'}"))
    (routines / "review.md").write_text(routine_text("review", "issue_comment: {mention: '@routines'}"))
    (routines / "labels.md").write_text(routine_text("labels", "issues: {types: [labeled]}"))
    with webhook_stack(tmp_path, redis_url, routines_dir=routines) as stack:
        stack.github.add_repo("acme/api", stack.installation)
        stack.github.repos["acme/api"].collaborators["Codertocat"] = "write"  # who comments in the payloads
        yield stack


def comment_event(hooks: HookStack, body: str, sender_type: str = "User") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / "issue_comment.created.json").read_text())
    data["repository"]["full_name"] = "acme/api"
    data["installation"] = {"id": hooks.installation}
    data["issue"]["number"] = hooks.github.add_issue("acme/api", "Crash on start", "It crashes.")
    data["comment"] = copy.deepcopy(data["comment"]) | add_comment(
        hooks.github, "acme/api", data["issue"]["number"], body
    )
    data["comment"]["author_association"] = "MEMBER"
    data["sender"]["type"] = sender_type
    return data


async def test_a_delivery_is_claimed_stored_and_taken_in_once(aredis: aioredis.Redis) -> None:
    body = b'{"action": "labeled"}'
    assert await enqueue_delivery(aredis, "g-1", "issues", body) is Intake.QUEUED
    assert await enqueue_delivery(aredis, "g-1", "issues", b"{}") is Intake.DUPLICATE
    assert await aredis.get(claim_key("g-1")) == b"issues"
    assert unpack_payload(await aredis.get(claim_key("g-1") + ":payload")) == body
    assert 3 * 86400 - 5 < await aredis.ttl(claim_key("g-1") + ":payload") <= 3 * 86400
    assert await aredis.ttl(claim_key("g-1")) > 3 * 86400
    assert [fields for _, fields in await aredis.xrange(STREAM)] == [{b"guid": b"g-1"}]
    assert await aredis.keys("arq:*") == [], "the web process writes none of arq's keys"


async def test_the_pump_queues_each_delivery_once_through_arqs_api(redis_url: str) -> None:
    pool = queue.connect(redis_url)
    try:
        for guid in ("p-1", "p-2"):
            assert await enqueue_delivery(pool, guid, "issues", f'{{"n": "{guid}"}}'.encode()) is Intake.QUEUED
        pump = DeliveryPump(pool, consumer="w-1")
        assert await pump.drain() == 2
        jobs = sorted((job.job_id, job.function, list(job.args)) for job in await pool.queued_jobs())
        assert jobs == [("delivery:p-1", DELIVERY_JOB, ["p-1"]), ("delivery:p-2", DELIVERY_JOB, ["p-2"])]
        assert await pool.xlen(STREAM) == 0, "taken entries are acknowledged and deleted"
        assert await enqueue_delivery(pool, "p-1", "issues", b'{"n": "p-1"}') is Intake.DUPLICATE, "a redelivery"
        assert await pump.drain() == 0
    finally:
        await pool.aclose()


async def test_an_entry_a_dead_worker_read_is_taken_over(redis_url: str) -> None:
    pool = queue.connect(redis_url)
    try:
        await enqueue_delivery(pool, "dead-1", "issues", b"{}")
        dead = DeliveryPump(pool, consumer="dead-worker")
        await dead._ensure_group()  # read, then the worker died before queueing the job:
        await pool.xreadgroup(GROUP, "dead-worker", {STREAM: ">"}, count=10)
        assert await DeliveryPump(pool, consumer="w-2", idle_ms=60_000).drain() == 0, "not stale yet"
        assert await DeliveryPump(pool, consumer="w-2", idle_ms=0).drain() == 1
        assert [job.job_id for job in await pool.queued_jobs()] == ["delivery:dead-1"]
    finally:
        await pool.aclose()


async def test_payloads_are_kept_lz4_compressed_and_read_back_either_way(aredis: aioredis.Redis) -> None:
    body = json.dumps(payload("issues.labeled")).encode()
    assert await enqueue_delivery(aredis, "g-z", "issues", body) is Intake.QUEUED
    stored = await aredis.get(claim_key("g-z") + ":payload")
    assert stored.startswith(b"lz4:") and len(stored) * 3 < len(body)
    assert unpack_payload(stored) == body
    assert unpack_payload(body) == body, "a payload stored uncompressed (before LZ4) reads as it is"


async def test_concurrent_deliveries_share_round_trips_each_taken_in_once(aredis: aioredis.Redis) -> None:
    intake = DeliveryIntake(aredis)
    guids = [f"g-{i % 30}" for i in range(40)]  # ten GUIDs arrive twice at once
    bodies = [f'{{"n": {i}}}'.encode() for i in range(40)]
    taken = await asyncio.gather(*(intake.enqueue(g, "issues", b, b.hex()) for g, b in zip(guids, bodies, strict=True)))
    assert taken == [Intake.QUEUED] * 30 + [Intake.DUPLICATE] * 10
    assert await aredis.xlen(STREAM) == 30
    assert unpack_payload(await aredis.get(claim_key("g-3") + ":payload")) == b'{"n": 3}', "the first copy is kept"
    await aredis.script_flush()  # Redis restarted: its script cache is gone
    assert await intake.enqueue("g-new", "issues", b"{}", "new") is Intake.QUEUED
    assert await intake.enqueue("g-new", "issues", b"{}", "new") is Intake.DUPLICATE


async def test_a_redis_restart_between_deliveries_is_not_answered_503(aredis: aioredis.Redis) -> None:
    intake = DeliveryIntake(aredis)
    assert await intake.enqueue("r-1", "issues", b"{}", "r-1") is Intake.QUEUED
    await aredis.client_kill_filter(_type="normal", skipme=True)  # what a Redis restart does to open connections
    assert await intake.enqueue("r-2", "issues", b"{}", "r-2") is Intake.QUEUED
    assert await intake.enqueue("r-1", "issues", b"{}", "r-1") is Intake.DUPLICATE


async def test_a_dead_redis_fails_every_delivery_of_the_batch_and_claims_nothing() -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    intake = DeliveryIntake(dead)
    results = await asyncio.gather(
        *(intake.enqueue(f"d-{i}", "issues", b"{}", str(i)) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, StoreError) and "Redis failed" in str(r) for r in results)
    await dead.aclose()


async def test_a_body_taken_in_is_refused_as_a_replay_under_any_other_guid_or_event(aredis: aioredis.Redis) -> None:
    body = b'{"action": "labeled"}'
    assert await enqueue_delivery(aredis, "g-1", "issues", body) is Intake.QUEUED
    assert await enqueue_delivery(aredis, "g-2", "issues", body) is Intake.REPLAY
    assert await enqueue_delivery(aredis, "g-3", "pull_request_review", body) is Intake.REPLAY
    assert await enqueue_delivery(aredis, "g-1", "issues", body) is Intake.DUPLICATE, "GitHub's redelivery"
    assert await aredis.keys(claim_key("g-[23]") + "*") == [], "a replay stores and claims nothing"
    assert [fields for _, fields in await aredis.xrange(STREAM)] == [{b"guid": b"g-1"}]
    body_claim = body_claim_key(hashlib.sha256(body).hexdigest())
    assert await aredis.get(body_claim) == b"g-1"
    assert await aredis.pttl(body_claim) == pytest.approx(await aredis.pttl(claim_key("g-1")), abs=2000)


async def test_a_guid_whose_claim_was_lost_after_its_body_claim_is_still_taken_in(aredis: aioredis.Redis) -> None:
    body = b'{"action": "labeled"}'
    assert await enqueue_delivery(aredis, "g-1", "issues", body) is Intake.QUEUED
    await aredis.delete(claim_key("g-1"))  # Redis failed between the two claims
    assert await enqueue_delivery(aredis, "g-1", "issues", body) is Intake.QUEUED
    assert await enqueue_delivery(aredis, "g-2", "issues", body) is Intake.REPLAY


def test_a_comment_fires_each_matching_routine_with_its_own_tracking_comment(hooks: HookStack) -> None:
    data = comment_event(hooks, "@routines please fix this")
    guid = hooks.send("issue_comment", data)
    runs = hooks.drain()
    assert sorted(r.routine for r in runs) == ["review", "triage"]
    with redis.Redis.from_url(hooks.settings.redis_url or "") as sync:
        kept = sorted(k.decode() for k in sync.keys(claim_key(guid) + "*"))
    assert kept == [claim_key(guid), claim_key(guid) + ":fired"], "the payload is dropped once handled"
    comments = [c for c in hooks.github.comments("acme/api") if c["user"]["type"] == "Bot"]
    assert len(comments) == 2
    for run in runs:
        (mine,) = [c for c in comments if run.id in c["body"]]
        assert hooks.settings.run_url(run.id) in mine["body"]
    reactions = hooks.github.issue_reactions("acme/api")
    assert [(r.get("comment_id"), r["reaction"]["content"]) for r in reactions] == [(data["comment"]["id"], "eyes")]


def test_a_retried_job_starts_no_second_run_and_posts_no_second_comment(hooks: HookStack) -> None:
    guid = hooks.send("issue_comment", comment_event(hooks, "@routines go"))
    with redis.Redis.from_url(hooks.settings.redis_url or "") as sync:
        body = sync.get(claim_key(guid) + ":payload")
        first = hooks.drain()
        assert sync.get(claim_key(guid) + ":payload") is None
        sync.set(claim_key(guid) + ":payload", unpack_payload(body or b""))  # the worker died before the job's end;
        # and the payload was stored uncompressed, as versions before LZ4 did

    async def again() -> list[Run]:
        pool = queue.connect(hooks.settings.redis_url or "")
        store = RedisStore(pool)
        try:
            deps = DeliveryDeps(store, pool, lambda: _routines(hooks), permission=_writer)
            return await process_delivery(deps, guid)
        finally:
            await pool.aclose()

    assert sorted(r.id for r in asyncio.run(again())) == sorted(r.id for r in first)
    assert asyncio.run(again()) == [], "once handled, a retried job finds nothing to do"
    assert len(hooks.drain()) == 2
    assert len([c for c in hooks.github.comments("acme/api") if c["user"]["type"] == "Bot"]) == 2


async def _writer(repo: str, login: str, payload: dict[str, Any]) -> str:
    return "write"


def _routines(hooks: HookStack) -> list[Any]:
    folder = hooks.settings.routines_dir
    return [parse_routine(p.read_text(), str(p)) for p in sorted(folder.glob("*.md"))]


def test_bot_comments_and_unmentioned_comments_start_nothing(hooks: HookStack) -> None:
    hooks.send("issue_comment", comment_event(hooks, "@routines loop forever", sender_type="Bot"))
    hooks.send("issue_comment", comment_event(hooks, "just chatting"))
    assert hooks.drain() == []
    assert hooks.github.comments("acme/api") and not hooks.github.issue_reactions("acme/api")


def test_each_handled_delivery_is_logged_with_what_it_fired_and_why_the_rest_did_not(hooks: HookStack) -> None:
    fired = hooks.send("issue_comment", comment_event(hooks, "@routines please look"))
    quiet = hooks.send("issue_comment", comment_event(hooks, "just chatting"))
    runs = hooks.drain()

    async def read() -> list[DeliveryRecord]:
        client = aioredis.Redis.from_url(hooks.settings.redis_url or "")
        try:
            return [record for _, record in await DeliveryLog(client).recent(10)]
        finally:
            await client.aclose()

    records = {r.guid: r for r in asyncio.run(read())}
    assert records[fired].outcome == "fired" and records[fired].event == "issue_comment"
    assert records[fired].fired == {run.routine: run.id for run in runs} and set(records[fired].fired) == {
        "triage",
        "review",
    }
    assert records[fired].why == {"labels": "does not listen to issue_comment"}
    assert records[quiet].outcome == "no match" and records[quiet].fired == {}
    assert "mention" in records[quiet].why["triage"] and records[quiet].repo == "acme/api"
    hooks.send("issue_comment", comment_event(hooks, "@routines please look"), guid=fired)  # a redelivery
    hooks.send("star", {"action": "created", "repository": {"full_name": "acme/api"}})
    # The web process logs what it turned away just after answering: wait for both to be written.
    deadline = time.monotonic() + 20
    while (turned_away := [(r.outcome, r.event, r.guid) for r in asyncio.run(read())[:2]])[0][1] != "star":
        assert time.monotonic() < deadline, f"the delivery log never showed the ignored star event: {turned_away}"
        time.sleep(0.05)
    assert turned_away[1] == ("duplicate", "issue_comment", fired) and turned_away[0][:2] == ("ignored", "star")


@pytest.mark.parametrize(
    ("state", "fields", "expected"),
    [
        (RunState.SUCCEEDED, {"pull_request": PullRequest(7, "http://gh/acme/api/pull/7")}, "draft pull request #7"),
        (RunState.NO_CHANGES, {}, "finished with no changes"),
        (RunState.FAILED, {"error": "the model API failed after 4 retries"}, "failed: the model API failed"),
    ],
)
def test_the_tracking_comment_is_edited_with_the_outcome(
    hooks: HookStack, state: RunState, fields: dict[str, Any], expected: str
) -> None:
    data = comment_event(hooks, "@routines go")
    hooks.send("issue_comment", data)
    run = next(r for r in hooks.drain() if r.routine == "triage")

    async def finish() -> bool:
        pool = queue.connect(hooks.settings.redis_url or "")
        s = hooks.settings
        async with GitHubForge(s.github_api_url, s.github_app_id or "", s.github_app_private_key or "") as forge:
            try:
                assert await pool.exists(tracking_key(run.id))
                ended = Run(**{**run.__dict__, "state": state, **fields})
                return await update_tracking_comment(forge, RedisStore(pool), ended, s.run_url(run.id))
            finally:
                await pool.aclose()

    assert asyncio.run(finish()) is True
    (comment,) = [c for c in hooks.github.comments("acme/api") if run.id in c["body"]]
    assert expected in comment["body"] and hooks.settings.run_url(run.id) in comment["body"]
    others = [c for c in hooks.github.comments("acme/api") if c["user"]["type"] == "Bot" and c is not comment]
    assert all(expected not in c["body"] for c in others), "the other run's comment is untouched"


def test_a_pull_request_paths_filter_is_applied_to_the_files_github_lists(tmp_path: Path, redis_url: str) -> None:
    routines = tmp_path / "routines"
    routines.mkdir()
    (routines / "docs.md").write_text(routine_text("docs", "pull_request: {paths: ['docs/**', '!docs/drafts/**']}"))
    with webhook_stack(tmp_path, redis_url, routines_dir=routines) as hooks:
        hooks.github.add_repo("acme/api", hooks.installation)
        hooks.github.repos["acme/api"].collaborators["Codertocat"] = "write"  # who comments in the payloads
        hooks.github.commit_files("acme/api", "drafts", {"docs/drafts/idea.md": "maybe\n"})
        hooks.github.commit_files("acme/api", "guide", {"docs/guide.md": "how\n", "src/app.py": "x = 1\n"})
        for head in ("drafts", "guide"):
            data = payload("pull_request.opened")
            data["repository"]["full_name"] = "acme/api"
            data["installation"] = {"id": hooks.installation}
            data["pull_request"]["number"] = asyncio.run(open_pull(hooks, head))
            data["pull_request"]["author_association"] = "MEMBER"
            hooks.send("pull_request", data)
        runs = hooks.drain()
    assert [(r.routine, r.trigger.data["number"]) for r in runs] == [("docs", data["pull_request"]["number"])]


def payload(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text())
    return loaded


async def open_pull(hooks: HookStack, head: str) -> int:
    state = hooks.github
    async with GitHubForge(state.base_url, str(state.app_id), state.private_key) as forge:
        repo = await forge.resolve("acme/api")
        pull = await forge.open_pull_request(repo, head=head, base="main", title=head, body="", draft=False, creds=None)
    return pull.number
