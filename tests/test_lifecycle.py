"""Lifecycle in Redis: paused/archived, daily quotas, concurrency groups and cancel flags."""

from __future__ import annotations

from dataclasses import replace

import pytest
from redis import asyncio as aioredis

from app.core.domain import Limits, Routine, Run, RunState, Trigger
from app.store.admission import ACTIVE, ARCHIVED, PAUSED, Lifecycle, Refused
from app.store.runs import RedisStore

NIGHTLY = Routine(name="nightly", repo="acme/api", prompt="p", limits=Limits(runs_per_day=2), source="nightly.md")
OTHER = Routine(name="other", repo="acme/api", prompt="p")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def make_run(store: RedisStore, run_id: str, state: RunState = RunState.QUEUED) -> None:
    await store.create_run(Run(id=run_id, routine="nightly", repo="acme/api", trigger=Trigger("api")))
    if state is not RunState.QUEUED:
        await store.transition(run_id, state)


async def test_pause_archive_and_resume_decide_whether_a_routine_may_run(aredis: aioredis.Redis) -> None:
    life = Lifecycle(aredis)
    await life.check_active(NIGHTLY)
    assert (await life.set_state("nightly", PAUSED, by="ops")).state == PAUSED
    with pytest.raises(Refused) as refused:
        await life.check_active(NIGHTLY)
    assert refused.value.status == 409 and refused.value.limit == "paused"
    assert "routines resume nightly" in str(refused.value)
    await life.set_state("other", ARCHIVED)
    assert {n: s.state for n, s in (await life.states()).items()} == {"nightly": PAUSED, "other": ARCHIVED}
    await life.set_state("nightly", ACTIVE)
    await life.check_active(NIGHTLY)
    assert (await life.state("nightly")).state == ACTIVE and list(await life.states()) == ["other"]


async def test_runs_per_day_and_the_global_cap_refuse_with_429_until_the_next_utc_day(
    aredis: aioredis.Redis,
) -> None:
    clock = Clock(1_735_730_000.0)  # 2025-01-01 11:13 UTC
    life = Lifecycle(aredis, clock=clock)
    await life.take_quota(NIGHTLY, 3)
    await life.take_quota(NIGHTLY, 3)
    with pytest.raises(Refused) as per_routine:
        await life.take_quota(NIGHTLY, 3)
    assert per_routine.value.status == 429 and per_routine.value.limit == "runs_per_day"
    assert "limits.runs_per_day" in str(per_routine.value) and "nightly.md" in str(per_routine.value)
    await life.take_quota(OTHER, 3)
    with pytest.raises(Refused) as overall:
        await life.take_quota(OTHER, 3)
    assert overall.value.limit == "max_runs_per_day" and "ROUTINES_MAX_RUNS_PER_DAY" in str(overall.value)
    assert await life.runs_today(["nightly", "other"]) == {"nightly": 2, "other": 1}
    clock.now += 86400
    await life.take_quota(NIGHTLY, 3)
    assert await life.runs_today(["nightly"]) == {"nightly": 1}


async def test_a_group_runs_one_at_a_time_and_hands_over_in_order(aredis: aioredis.Redis) -> None:
    store, life = RedisStore(aredis), Lifecycle(aredis)
    for run_id in ("r1", "r2", "r3"):
        await make_run(store, run_id)
    first = await life.admit("r1", "acme/api")
    assert (first.start, first.behind) == ("r1", None)
    assert (await life.admit("r2", "acme/api")).behind == "r1"
    assert (await life.admit("r3", "acme/api")).start is None
    assert await life.members("acme/api") == ["r1", "r2", "r3"]
    assert await life.release("r2") is None  # a waiting run that ends just leaves the line
    assert await life.release("r1") == "r3"
    assert await life.release("r3") is None
    assert await life.members("acme/api") == []
    assert await life.release("never-grouped") is None


async def test_a_group_whose_holder_ended_without_release_is_not_stuck(aredis: aioredis.Redis) -> None:
    store, life = RedisStore(aredis), Lifecycle(aredis)
    for run_id in ("r1", "r2", "r3"):
        await make_run(store, run_id)
    await life.admit("r1", "g")
    await life.admit("r2", "g")
    await store.transition("r1", RunState.CANCELLED)  # its worker died before releasing
    admitted = await life.admit("r3", "g")
    assert (admitted.start, admitted.behind) == ("r2", "r2")
    assert await life.members("g") == ["r2", "r3"]


async def test_a_cancel_flag_is_seen_by_the_check_the_runner_polls(aredis: aioredis.Redis) -> None:
    life = Lifecycle(aredis)
    check = life.cancel_check("r1")
    assert await check() is False
    await life.request_cancel("r1")
    assert await check() is True and await life.cancel_requested("r2") is False


async def test_describe_gives_the_fields_the_api_shows(aredis: aioredis.Redis) -> None:
    life = Lifecycle(aredis)
    await life.set_state("nightly", PAUSED, by="api")
    await life.take_quota(OTHER, None)
    fields = await life.describe([NIGHTLY, replace(OTHER, limits=Limits(runs_per_day=5))])
    assert fields["nightly"]["state"] == PAUSED and fields["nightly"]["by"] == "api"
    assert fields["nightly"]["runs_per_day"] == 2 and fields["nightly"]["runs_today"] == 0
    assert fields["other"] == {"state": ACTIVE, "since": None, "by": None, "runs_today": 1, "runs_per_day": 5}
