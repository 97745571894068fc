"""Dispatch: a trigger becomes a run that starts, waits for its group, or is refused visibly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis
from redis import asyncio as aioredis

from app.core.domain import Concurrency, Limits, Routine, RunState, Trigger
from app.core.errors import Refused
from app.store import queue
from app.store.cancels import CancelFlags
from app.store.groups import ConcurrencyGroups
from app.store.quotas import Quotas
from app.store.routine_states import PAUSED, RoutineStates
from app.store.runs import RedisStore
from app.triggers.dispatch import fire, fire_checked, group_of, release, restart_stalled_groups

API = Trigger("api", text="go")
PLAIN = Routine(name="plain", repo="acme/api", prompt="p", limits=Limits(runs_per_day=2))
QUEUEING = Routine(name="queueing", repo="acme/api", prompt="p", concurrency=Concurrency(group="{{ repo }}"))
CANCELLING = Routine(
    name="cancelling",
    repo="acme/api",
    prompt="p",
    concurrency=Concurrency(group="{{ routine }}-{{ repo }}", cancel_in_progress=True),
)


@pytest.fixture
async def pool(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = queue.connect(redis_url)
    yield pool
    await pool.aclose()


async def enqueued(pool: ArqRedis, run_id: str) -> bool:
    return bool(await pool.exists(f"arq:job:{queue.run_job_id(run_id)}"))


async def event_types(store: RedisStore, run_id: str) -> list[str]:
    return [e.type for e in await store.events(run_id)]


async def test_a_free_run_is_recorded_then_enqueued_once(aredis: aioredis.Redis, pool: ArqRedis) -> None:
    store = RedisStore(aredis)
    run = await fire(store, pool, PLAIN, API)
    assert run.state is RunState.QUEUED and run.repo == "acme/api" and await enqueued(pool, run.id)
    again = await fire(store, pool, PLAIN, API, run_id=run.id)  # a retried job reuses its run id
    assert again.id == run.id and len(await store.list_runs(routine="plain")) == 1
    assert await Quotas(aredis).runs_today(["plain"]) == {"plain": 1}


async def test_a_paused_routine_refuses_with_a_cancelled_run_naming_why(aredis: aioredis.Redis, pool: ArqRedis) -> None:
    store = RedisStore(aredis)
    await RoutineStates(aredis).set("plain", PAUSED)
    with pytest.raises(Refused) as refused:
        await fire_checked(store, pool, PLAIN, API)
    run = refused.value.run
    assert run is not None and refused.value.status == 409
    assert run.state is RunState.CANCELLED and run.error is not None and "is paused" in run.error
    assert "run.refused" in await event_types(store, run.id) and not await enqueued(pool, run.id)
    quiet = await fire(store, pool, PLAIN, API)
    assert quiet.state is RunState.CANCELLED


async def test_runs_per_day_refuses_the_third_run(aredis: aioredis.Redis, pool: ArqRedis) -> None:
    store = RedisStore(aredis)
    await fire(store, pool, PLAIN, API)
    await fire(store, pool, PLAIN, API)
    third = await fire(store, pool, PLAIN, API)
    assert third.state is RunState.CANCELLED and third.error is not None and "runs_per_day" in third.error
    with pytest.raises(Refused) as overall:
        await fire_checked(store, pool, QUEUEING, API, max_runs_per_day=2)
    assert overall.value.status == 429 and overall.value.limit == "max_runs_per_day"


async def test_a_queued_group_starts_the_next_run_when_the_running_one_ends(
    aredis: aioredis.Redis, pool: ArqRedis
) -> None:
    store = RedisStore(aredis)
    first = await fire(store, pool, QUEUEING, API)
    second = await fire(store, pool, QUEUEING, API)
    assert await enqueued(pool, first.id) and not await enqueued(pool, second.id)
    assert "run.waiting" in await event_types(store, second.id)
    await store.transition(first.id, RunState.FAILED, error="boom")
    assert await release(store, pool, first.id) == second.id
    assert await enqueued(pool, second.id)
    assert group_of(QUEUEING, "acme/api") == "acme/api"


async def test_a_group_handed_over_by_a_worker_that_died_before_enqueueing_is_restarted(
    aredis: aioredis.Redis, pool: ArqRedis
) -> None:
    store = RedisStore(aredis)
    first = await fire(store, pool, QUEUEING, API)
    second = await fire(store, pool, QUEUEING, API)
    third = await fire(store, pool, QUEUEING, API)
    await store.transition(first.id, RunState.FAILED, error="boom")
    assert await ConcurrencyGroups(aredis).release(first.id) == second.id  # ...and the worker died here
    assert not await enqueued(pool, second.id)
    assert await restart_stalled_groups(store, pool) == [second.id]
    assert await enqueued(pool, second.id) and not await enqueued(pool, third.id)
    assert await restart_stalled_groups(store, pool) == [], "a run whose job exists is not queued twice"


async def test_cancel_in_progress_cancels_a_queued_run_and_asks_a_running_one_to_stop(
    aredis: aioredis.Redis, pool: ArqRedis
) -> None:
    store, flags = RedisStore(aredis), CancelFlags(aredis)
    first = await fire(store, pool, CANCELLING, API)
    second = await fire(store, pool, CANCELLING, API)
    cancelled = await store.get_run(first.id)
    assert cancelled.state is RunState.CANCELLED and "superseded by run " + second.id in (cancelled.error or "")
    assert await enqueued(pool, second.id)

    await store.transition(second.id, RunState.PREPARING)
    third = await fire(store, pool, CANCELLING, API)
    assert await flags.requested(second.id) and not await enqueued(pool, third.id)
    assert (await store.get_run(second.id)).state is RunState.PREPARING  # the runner ends it
    await store.transition(second.id, RunState.CANCELLED)
    assert await release(store, pool, second.id) == third.id and await enqueued(pool, third.id)
