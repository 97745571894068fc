"""Concurrency groups in Redis: one run at a time, handed over in order, never stuck on a dead holder."""

from __future__ import annotations

from redis import asyncio as aioredis

from app.core.domain import Run, RunState, Trigger
from app.store.groups import ConcurrencyGroups
from app.store.runs import RedisStore


async def make_run(store: RedisStore, run_id: str) -> None:
    await store.create_run(Run(id=run_id, routine="nightly", repo="acme/api", trigger=Trigger("api")))


async def test_a_group_runs_one_at_a_time_and_hands_over_in_order(aredis: aioredis.Redis) -> None:
    store, groups = RedisStore(aredis), ConcurrencyGroups(aredis)
    for run_id in ("r1", "r2", "r3"):
        await make_run(store, run_id)
    first = await groups.admit("r1", "acme/api")
    assert (first.start, first.behind) == ("r1", None)
    assert (await groups.admit("r2", "acme/api")).behind == "r1"
    assert (await groups.admit("r3", "acme/api")).start is None
    assert await groups.members("acme/api") == ["r1", "r2", "r3"]
    assert await groups.holders() == ["r1"]
    assert await groups.release("r2") is None  # a waiting run that ends just leaves the line
    assert await groups.release("r1") == "r3"
    assert await groups.release("r3") is None
    assert await groups.members("acme/api") == [] and await groups.holders() == []
    assert await groups.release("never-grouped") is None


async def test_a_group_whose_holder_ended_without_release_is_not_stuck(aredis: aioredis.Redis) -> None:
    store, groups = RedisStore(aredis), ConcurrencyGroups(aredis)
    for run_id in ("r1", "r2", "r3"):
        await make_run(store, run_id)
    await groups.admit("r1", "g")
    await groups.admit("r2", "g")
    await store.transition("r1", RunState.CANCELLED)  # its worker died before releasing
    admitted = await groups.admit("r3", "g")
    assert (admitted.start, admitted.behind) == ("r2", "r2")
    assert await groups.members("g") == ["r2", "r3"]
