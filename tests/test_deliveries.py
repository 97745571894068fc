"""Deliveries: claimed once, stored raw, handled by the worker, acknowledged on the test GitHub."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import asyncio as aioredis

from app import queue
from app.deliveries import DELIVERY_JOB, DeliveryDeps, claim_key, enqueue_delivery, process_delivery
from app.domain import PullRequest, Run, RunState
from app.forge.github import GitHubForge
from app.routines import parse_routine
from app.store import RedisStore
from app.testing.webhook_stack import HookStack, webhook_stack
from app.tracking import tracking_key, update_tracking_comment

PAYLOADS = Path(__file__).parent / "payloads"


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
        yield stack


def comment_event(hooks: HookStack, body: str, sender_type: str = "User") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / "issue_comment.created.json").read_text())
    data["repository"]["full_name"] = "acme/api"
    data["installation"] = {"id": hooks.installation}
    data["issue"]["number"] = hooks.github.add_issue("acme/api", "Crash on start", "It crashes.")
    data["comment"] = copy.deepcopy(data["comment"]) | hooks.github.add_comment(
        "acme/api", data["issue"]["number"], body
    )
    data["comment"]["author_association"] = "MEMBER"
    data["sender"]["type"] = sender_type
    return data


async def test_a_delivery_is_claimed_stored_and_queued_once(aredis: aioredis.Redis) -> None:
    body = b'{"action": "labeled"}'
    assert await enqueue_delivery(aredis, "g-1", "issues", body) is True
    assert await enqueue_delivery(aredis, "g-1", "issues", b"{}") is False
    assert await aredis.get(claim_key("g-1")) == b"issues"
    assert await aredis.get(claim_key("g-1") + ":payload") == body
    assert 3 * 86400 - 5 < await aredis.ttl(claim_key("g-1") + ":payload") <= 3 * 86400
    assert await aredis.ttl(claim_key("g-1")) > 3 * 86400
    job = queue.loads(await aredis.get("arq:job:delivery:g-1"))
    assert (job["f"], job["a"]) == (DELIVERY_JOB, ["g-1"])
    assert await aredis.zrange("arq:queue", 0, -1) == [b"delivery:g-1"]
    await aredis.delete("arq:job:delivery:g-1", "arq:queue")  # handled, and arq's result expired after an hour
    assert await enqueue_delivery(aredis, "g-1", "issues", body) is False, "the claim outlives arq's job and result"


def test_a_comment_fires_each_matching_routine_with_its_own_tracking_comment(hooks: HookStack) -> None:
    data = comment_event(hooks, "@routines please fix this")
    hooks.send("issue_comment", data)
    runs = hooks.drain()
    assert sorted(r.routine for r in runs) == ["review", "triage"]
    comments = [c for c in hooks.github.comments("acme/api") if c["user"]["type"] == "Bot"]
    assert len(comments) == 2
    for run in runs:
        (mine,) = [c for c in comments if run.id in c["body"]]
        assert hooks.settings.run_url(run.id) in mine["body"]
    reactions = hooks.github.issue_reactions("acme/api")
    assert [(r.get("comment_id"), r["reaction"]["content"]) for r in reactions] == [(data["comment"]["id"], "eyes")]


def test_a_retried_job_starts_no_second_run_and_posts_no_second_comment(hooks: HookStack) -> None:
    guid = hooks.send("issue_comment", comment_event(hooks, "@routines go"))
    first = hooks.drain()

    async def again() -> list[Run]:
        pool = queue.connect(hooks.settings.redis_url or "")
        store = RedisStore(pool)
        try:
            return await process_delivery(DeliveryDeps(store, pool, lambda: _routines(hooks)), guid)
        finally:
            await pool.aclose()

    assert sorted(r.id for r in asyncio.run(again())) == sorted(r.id for r in first)
    assert len(hooks.drain()) == 2
    assert len([c for c in hooks.github.comments("acme/api") if c["user"]["type"] == "Bot"]) == 2


def _routines(hooks: HookStack) -> list[Any]:
    folder = hooks.settings.routines_dir
    return [parse_routine(p.read_text(), str(p)) for p in sorted(folder.glob("*.md"))]


def test_bot_comments_and_unmentioned_comments_start_nothing(hooks: HookStack) -> None:
    hooks.send("issue_comment", comment_event(hooks, "@routines loop forever", sender_type="Bot"))
    hooks.send("issue_comment", comment_event(hooks, "just chatting"))
    assert hooks.drain() == []
    assert hooks.github.comments("acme/api") and not hooks.github.issue_reactions("acme/api")


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
