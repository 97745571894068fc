"""The recovery sweep against the test GitHub's delivery log: failed deliveries come back, exactly once.

The Redis outage test stops a real Redis (append-only file) in the middle of a burst of
deliveries and starts it again. Its outage lasts ROUTINES_TEST_OUTAGE_S seconds (default 2);
the 60 s variant of the issue runs with ROUTINES_SLOW_TESTS=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.forge.github import GitHubForge
from app.forge.github_app import GitHubApp
from app.store import queue
from app.store.embedded import start
from app.store.runs import RedisStore
from app.testing.github_hooks import deliver
from app.testing.serve import free_port
from app.testing.webhook_stack import HookStack, webhook_stack
from app.triggers.recovery import SweepPolicy, SweepReport, sweep
from tests.support.paths import PAYLOADS

ROUTINE = '---\nname: labels\nrepo: "*"\non:\n  github:\n    issues: {types: [labeled]}\n---\nDo it.\n'


def labeled(hooks: HookStack, n: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / "issues.labeled.json").read_text())
    data["repository"]["full_name"] = "acme/api"
    data["installation"] = {"id": hooks.installation}
    data["issue"]["number"] = hooks.github.add_issue("acme/api", f"issue {n}")
    return data


def run_sweep(hooks: HookStack, policy: SweepPolicy | None = None, now: float | None = None) -> SweepReport:
    async def go() -> SweepReport:
        s = hooks.settings
        pool = queue.connect(s.redis_url or "")
        async with GitHubForge(s.github_api_url, s.github_app_id or "", s.github_app_private_key or "") as forge:
            try:
                when = now or time.time()
                return await sweep(GitHubApp(forge), RedisStore(pool).redis, policy or SweepPolicy(), when)
            finally:
                await pool.aclose()

    return asyncio.run(go())


def stack(tmp_path: Path, redis_url: str) -> Any:
    routines = tmp_path / "routines"
    routines.mkdir(exist_ok=True)
    (routines / "labels.md").write_text(ROUTINE)
    return webhook_stack(tmp_path, redis_url, routines_dir=routines)


@pytest.fixture
def hooks(tmp_path: Path, redis_url: str) -> Iterator[HookStack]:
    with stack(tmp_path, redis_url) as s:
        s.github.add_repo("acme/api", s.installation)
        s.github.repos["acme/api"].collaborators["Codertocat"] = "write"  # who acts in the payloads
        yield s


def test_deliveries_that_never_arrived_are_redelivered_once_and_run_once(hooks: HookStack) -> None:
    delivered = [hooks.send("issues", labeled(hooks, n)) for n in range(3)]
    down = f"http://127.0.0.1:{free_port()}/webhooks/github"
    lost = [deliver(hooks.github, "issues", labeled(hooks, n), down, "test-webhook-secret") for n in range(4)]
    assert [d["status_code"] for d in hooks.github.hook_deliveries] == [202] * 3 + [0] * 4
    for guid in lost:
        hooks.github.hook_targets[guid].url = hooks.hook_url  # the web process is back
    report = run_sweep(hooks, SweepPolicy(per_page=2))
    assert sorted(report.failed) == sorted(lost) and sorted(report.requested) == sorted(lost)
    assert len(hooks.github.redelivery_requests) == 4
    runs = hooks.drain()
    assert sorted(r.trigger.data["delivery"] for r in runs) == sorted(delivered + lost)
    assert run_sweep(hooks).requested == []


def test_a_redelivery_is_requested_again_only_after_retry_after_and_at_most_max_attempts(hooks: HookStack) -> None:
    down = f"http://127.0.0.1:{free_port()}/webhooks/github"
    guid = deliver(hooks.github, "issues", labeled(hooks, 0), down, "test-webhook-secret")
    policy = SweepPolicy(retry_after_s=1, max_attempts=2)
    now = time.time()
    assert run_sweep(hooks, policy, now).requested == [guid]
    assert run_sweep(hooks, policy, now + 0.9).requested == [], "asked less than retry_after_s ago"
    assert run_sweep(hooks, policy, now + 1.1).requested == [guid]
    report = run_sweep(hooks, policy, now + 2.2)
    assert (report.requested, report.gave_up) == ([], [guid])
    assert len(hooks.github.redelivery_requests) == 2


def outage_burst(tmp_path: Path, outage_s: float) -> None:
    port = free_port()
    redis = start(tmp_path / "redis-data", port=port)
    try:
        with stack(tmp_path, redis.url) as hooks:
            hooks.github.add_repo("acme/api", hooks.installation)
            hooks.github.repos["acme/api"].collaborators["Codertocat"] = "write"
            before = [hooks.send("issues", labeled(hooks, n)) for n in range(5)]
            redis.stop()
            during: list[str] = []
            ends = time.monotonic() + outage_s
            while time.monotonic() < ends or len(during) < 5:
                during.append(hooks.send("issues", labeled(hooks, len(during))))
                time.sleep(min(outage_s / 10, 1.0))
            redis = start(tmp_path / "redis-data", port=port)
            after = [hooks.send("issues", labeled(hooks, n)) for n in range(5)]
            codes = {d["guid"]: d["status_code"] for d in hooks.github.hook_deliveries}
            assert {codes[g] for g in before + after} == {202} and {codes[g] for g in during} == {503}
            report = run_sweep(hooks, SweepPolicy(per_page=7))
            assert sorted(report.requested) == sorted(during)
            runs = hooks.drain()
            by_delivery = sorted(r.trigger.data["delivery"] for r in runs)
            assert by_delivery == sorted(before + during + after), "every delivery ran, each exactly once"
            assert run_sweep(hooks).failed == []
    finally:
        redis.stop()


def test_a_redis_outage_during_a_burst_loses_no_delivery(tmp_path: Path) -> None:
    outage_burst(tmp_path, float(os.environ.get("ROUTINES_TEST_OUTAGE_S", "0")))


@pytest.mark.skipif(not os.environ.get("ROUTINES_SLOW_TESTS"), reason="60 s; set ROUTINES_SLOW_TESTS=1")
def test_a_60_second_redis_outage_during_a_burst_loses_no_delivery(tmp_path: Path) -> None:
    outage_burst(tmp_path, 60.0)
