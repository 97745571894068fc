"""Metrics in Redis: counts of many processes add up, a Redis failure never fails what was counted, and a
run's fire, start, end and live state are counted in the transactions that record them, exactly once."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from redis import asyncio as aioredis

from app.core.domain import Run, RunState, Trigger
from app.core.errors import InvalidTransition
from app.core.metrics import FIRST_MODEL_REQUEST, MODEL_COST, RUN_DURATION, WEBHOOK_DELIVERIES
from app.store import metrics
from app.store.metrics import RedisMetrics
from app.store.runs import RedisStore


async def snapshot(redis: aioredis.Redis) -> metrics.Snapshot:
    return await metrics.read(redis, "routines:", now=time.time())


async def test_counts_of_several_processes_add_up_in_redis(aredis: aioredis.Redis) -> None:
    web_1, web_2 = RedisMetrics(aredis), RedisMetrics(aredis)
    web_1.count(WEBHOOK_DELIVERIES, outcome="queued")
    web_1.count(WEBHOOK_DELIVERIES, outcome="queued")
    web_2.count(WEBHOOK_DELIVERIES, outcome="queued")
    web_2.count(WEBHOOK_DELIVERIES, outcome="pong")
    web_2.count(MODEL_COST, 0.25, routine="nightly")
    web_1.count(MODEL_COST, 0.5, routine="nightly")
    for seconds in (0.2, 3, 3, 4000):
        web_1.observe(FIRST_MODEL_REQUEST, seconds, routine="nightly")

    assert (await snapshot(aredis)).counters == {}, "nothing is sent before a flush"
    assert await web_1.flush() and await web_2.flush()
    assert await web_1.flush(), "an empty flush sends nothing and succeeds"

    snap = await snapshot(aredis)
    assert snap.counters[WEBHOOK_DELIVERIES.name] == {("queued",): 3, ("pong",): 1}
    assert snap.counters[MODEL_COST.name] == {("nightly",): 0.75}
    observed = snap.histograms[FIRST_MODEL_REQUEST.name][("nightly",)]
    assert observed.sum == pytest.approx(4006.2)
    bounds = [*FIRST_MODEL_REQUEST.buckets, float("inf")]
    assert {bounds[i]: n for i, n in enumerate(observed.buckets) if n} == {0.5: 1, 5: 2, float("inf"): 1}


async def test_counts_redis_refuses_are_kept_and_sent_once_it_accepts_them(aredis: aioredis.Redis) -> None:
    counting = RedisMetrics(aredis)
    await aredis.set("routines:metrics:counters", "not a hash")  # every HINCRBY on it fails (WRONGTYPE)
    counting.count(WEBHOOK_DELIVERIES, outcome="queued")
    counting.observe(RUN_DURATION, 12.5, routine="nightly", state="succeeded")

    assert not await counting.flush()
    assert await aredis.hlen("routines:metrics:histograms") == 2, "what Redis took is not kept"  # type: ignore[misc]

    counting.count(WEBHOOK_DELIVERIES, outcome="queued")
    await aredis.delete("routines:metrics:counters")
    assert await counting.flush()
    snap = await snapshot(aredis)
    assert snap.counters[WEBHOOK_DELIVERIES.name] == {("queued",): 2}
    assert snap.histograms[RUN_DURATION.name][("nightly", "succeeded")].sum == 12.5, "sent once, not again"


async def test_an_unreachable_redis_fails_no_count_and_the_counts_wait_for_it(aredis: aioredis.Redis) -> None:
    down = aioredis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=1)
    counting = RedisMetrics(down)
    counting.count(WEBHOOK_DELIVERIES, outcome="unavailable")
    assert not await counting.flush()
    counting.redis = aredis  # Redis is back
    assert await counting.flush()
    assert (await snapshot(aredis)).counters[WEBHOOK_DELIVERIES.name] == {("unavailable",): 1}
    await down.aclose()


async def test_the_background_flush_sends_counts_and_close_sends_the_rest(aredis: aioredis.Redis) -> None:
    counting = RedisMetrics(aredis, flush_s=0.05)
    counting.start()
    counting.count(WEBHOOK_DELIVERIES, outcome="pong")
    await asyncio.sleep(0.5)  # ten periods
    assert (await snapshot(aredis)).counters[WEBHOOK_DELIVERIES.name] == {("pong",): 1}
    counting.count(WEBHOOK_DELIVERIES, outcome="pong")
    await counting.close()
    assert (await snapshot(aredis)).counters[WEBHOOK_DELIVERIES.name] == {("pong",): 2}


async def test_wrong_labels_are_not_counted_and_say_so(
    aredis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    counting = RedisMetrics(aredis)
    counting.count(WEBHOOK_DELIVERIES, outcome="queued", run_id="0123")
    await counting.flush()
    assert (await snapshot(aredis)).counters == {}
    assert "takes ('outcome',)" in caplog.text


async def test_a_worker_heartbeat_counts_it_alive_until_it_closes(aredis: aioredis.Redis) -> None:
    clock = [1000.0]
    worker = RedisMetrics(aredis, clock=lambda: clock[0])
    worker.beat_as("worker-a")
    await worker.flush()
    assert (await metrics.read(aredis, "routines:", now=1030)).workers_alive == 1
    assert (await metrics.read(aredis, "routines:", now=1061)).workers_alive == 0, "silent for over a minute"
    clock[0] = 1005
    await worker.flush()  # within BEAT_S of the last beat: nothing to send
    assert await aredis.zscore("routines:metrics:workers", "worker-a") == 1000
    clock[0] = 1050
    await worker.flush()
    assert (await metrics.read(aredis, "routines:", now=1100)).workers_alive == 1
    await worker.close()
    assert (await metrics.read(aredis, "routines:", now=1050)).workers_alive == 0


def new_run(routine: str = "nightly", kind: str = "api") -> Run:
    return Run(id=f"run{time.monotonic_ns()}", routine=routine, repo="acme/api", trigger=Trigger(kind))


async def test_a_runs_fire_start_end_and_live_state_are_counted_with_its_records(aredis: aioredis.Redis) -> None:
    store = RedisStore(aredis)
    done, refused = new_run(), new_run(kind="schedule")
    await store.create_run(done)
    await store.create_run(refused)
    assert (await snapshot(aredis)).runs == {("nightly", "queued"): 2}

    await store.transition(done.id, RunState.PREPARING)
    await store.transition(refused.id, RunState.CANCELLED, error="paused")
    await store.transition(done.id, RunState.RUNNING)
    await store.update(done.id, turns=3)
    assert (await snapshot(aredis)).runs == {
        ("nightly", "queued"): 0,
        ("nightly", "preparing"): 0,
        ("nightly", "running"): 1,
    }
    await store.transition(done.id, RunState.FINISHING)
    ended = await store.transition(done.id, RunState.SUCCEEDED)

    snap = await snapshot(aredis)
    assert snap.counters["routines_runs_fired"] == {("nightly", "api"): 1, ("nightly", "schedule"): 1}
    assert snap.counters["routines_runs_started"] == {("nightly",): 1}
    assert snap.counters["routines_runs_ended"] == {("nightly", "succeeded"): 1, ("nightly", "cancelled"): 1}
    assert set(snap.runs.values()) == {0}
    durations = snap.histograms[RUN_DURATION.name]
    assert durations[("nightly", "succeeded")].sum == pytest.approx(ended.updated_at - done.created_at)
    assert sum(durations[("nightly", "cancelled")].buckets) == 1


async def test_a_run_ended_by_two_processes_at_once_is_counted_once(aredis: aioredis.Redis, redis_url: str) -> None:
    other_process = aioredis.Redis.from_url(redis_url)
    store, other = RedisStore(aredis), RedisStore(other_process)
    run = new_run()
    await store.create_run(run)
    outcomes = await asyncio.gather(
        store.transition(run.id, RunState.CANCELLED, error="cancelled"),
        other.transition(run.id, RunState.FAILED, error="failed"),
        return_exceptions=True,
    )
    await other_process.aclose()
    assert sum(isinstance(o, InvalidTransition) for o in outcomes) == 1
    assert sum((await snapshot(aredis)).counters["routines_runs_ended"].values()) == 1


async def test_a_redis_error_while_counting_fails_no_run_record(
    aredis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="app.store.metrics")
    await aredis.set("routines:metrics:counters", "not a hash")
    await aredis.set("routines:metrics:runs", "not a hash")
    store = RedisStore(aredis)
    run = new_run()
    await store.create_run(run)
    await store.transition(run.id, RunState.PREPARING)
    assert (await store.get_run(run.id)).state is RunState.PREPARING
    assert "metrics not counted" in caplog.text


async def test_a_run_recorded_before_metrics_existed_leaves_the_live_gauge_alone(aredis: aioredis.Redis) -> None:
    store = RedisStore(aredis)
    old, new = new_run(), new_run()
    await aredis.set(f"routines:run:{old.id}", json.dumps(old.to_json()))  # as an older version recorded it
    await store.create_run(new)
    await store.transition(old.id, RunState.PREPARING)
    await store.transition(new.id, RunState.PREPARING)
    snap = await snapshot(aredis)
    assert snap.runs == {("nightly", "queued"): 0, ("nightly", "preparing"): 1}
    assert snap.counters["routines_runs_started"] == {("nightly",): 2}
    assert "live_counted" not in (await store.get_run(new.id)).to_json()
