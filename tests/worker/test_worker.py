"""The worker: its schedule tick (many arq workers on one Redis fire each slot exactly once, and catch up once),
its shutdown, and the threads its jobs' blocking calls run in."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from arq import Worker
from arq.worker import Function, func
from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.core.config import Settings
from app.core.domain import Run, Trigger, new_run_id
from app.models.anthropic import AnthropicModel
from app.routines.catalog import ApiRoutines
from app.store import queue
from app.store.leases import Leases, reap
from app.store.routine_states import PAUSED, RoutineStates
from app.store.runs import RedisStore
from app.worker.ticks import ScheduleTicker
from app.worker.worker import close_worker, create_worker, hand_back, shutdown, stop_worker
from tests.support.clock import Clock

HOURLY = '---\nname: hourly\nrepo: acme/api\non:\n  schedule:\n    - cron: "0 * * * *"\n---\nTidy up.\n'
START = datetime(2025, 1, 1, 0, 30, tzinfo=UTC).timestamp()


def settings_for(tmp_path: Path, redis_url: str) -> Settings:
    routines = tmp_path / "routines"
    routines.mkdir(exist_ok=True)
    (routines / "hourly.md").write_text(HOURLY)
    return Settings(redis_url=redis_url, routines_dir=routines, data_dir=tmp_path / "data", poll_delay_ms=5)


@asynccontextmanager
async def workers(
    settings: Settings,
    clock: Callable[[], float] = time.time,
    count: int = 1,
    *,
    tick_s: float | None = 0.005,
    functions: dict[str, Function] | None = None,
) -> AsyncIterator[list[Worker]]:
    """`count` running workers (with `functions` besides their own), stopped and closed on the way out."""
    started = [create_worker(settings, handle_signals=False, clock=clock, tick_s=tick_s) for _ in range(count)]
    for w in started:
        w.functions.update(functions or {})
    tasks = [asyncio.create_task(w.main()) for w in started]
    try:
        yield started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in started:
            await close_worker(w)


def ticks(worker: Worker) -> int:
    ticker: ScheduleTicker | None = worker.ctx.get("ticker")
    return ticker.ticks if ticker else 0


async def until(condition: Callable[[], object], what: str) -> None:
    for _ in range(4000):
        if await condition() if asyncio.iscoroutinefunction(condition) else condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"gave up waiting for {what}")


async def settle(pool: list[Worker], store: RedisStore) -> None:
    """Every worker ticks twice more (a full tick at the current time) and the queue is drained."""
    marks = [ticks(w) + 2 for w in pool]
    await until(lambda: all(ticks(w) >= m for w, m in zip(pool, marks, strict=True)), "every worker to tick")

    async def drained() -> bool:
        return await store.redis.zcard("arq:queue") == 0 and not await store.redis.keys("arq:in-progress:*")

    await until(drained, "the queue to drain")


async def slots_fired(store: RedisStore) -> Counter[int]:
    runs = await store.list_runs(routine="hourly", limit=200)
    return Counter(int(run.trigger.data["slot_ms"]) for run in runs if run.trigger.kind == "schedule")


def hour(n: int) -> int:
    return int((START - 1800 + 3600 * n) * 1000)


async def test_three_workers_racing_over_twenty_slots_fire_each_exactly_once(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    clock = Clock(START)
    store_settings = settings_for(tmp_path, redis_url)
    async with workers(store_settings, clock, 3) as pool:
        store = RedisStore(aredis)
        await settle(pool, store)
        for _ in range(20):
            clock.now += 3600
            await settle(pool, store)
        fired = await slots_fired(store)
    assert fired == Counter({hour(n): 1 for n in range(1, 21)})


async def test_a_worker_down_across_slots_catches_up_with_the_latest_slot_once(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    clock = Clock(START)
    settings = settings_for(tmp_path, redis_url)
    async with workers(settings, clock, 1) as pool:
        store = RedisStore(aredis)
        await settle(pool, store)
        assert await slots_fired(store) == Counter()
    clock.now += 3 * 3600 + 600  # down across 01:00, 02:00 and 03:00
    async with workers(settings, clock, 1) as pool:
        store = RedisStore(aredis)
        await settle(pool, store)
        await settle(pool, store)
        assert await slots_fired(store) == Counter({hour(3): 1})


async def test_a_paused_routine_misses_its_slots_and_resuming_does_not_replay_them(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    clock = Clock(START)
    settings = settings_for(tmp_path, redis_url)
    async with workers(settings, clock, 1) as pool:
        store = RedisStore(aredis)
        states = RoutineStates(store.redis)
        await settle(pool, store)
        await states.set("hourly", PAUSED)
        clock.now += 3600
        await settle(pool, store)
        await states.set("hourly", "active")
        await settle(pool, store)
        assert await slots_fired(store) == Counter()
        (settings.routines_dir / "hourly.md").write_text(HOURLY.replace("0 * * * *", "15 * * * *"))
        clock.now += 2700  # 02:15: the changed file is read without a restart
        await settle(pool, store)
        assert await slots_fired(store) == Counter({hour(2) + 15 * 60_000: 1})


async def test_a_worker_stopped_while_a_job_writes_its_result_still_stops_its_own_tasks(
    redis_url: str, aredis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """arq's close cancels its jobs and gathers them before on_shutdown; a job cancelled while it writes
    its result (a shielded write) ends cancelled, the gather raises, and on_shutdown never runs.
    close_worker stops the worker's own tasks (here one that would run forever) anyway."""
    caplog.set_level(logging.INFO, logger="arq.worker")
    started, release = asyncio.Event(), asyncio.Event()

    async def job(ctx: dict[str, object]) -> str:
        started.set()
        await release.wait()
        return "done"

    async def startup(ctx: dict[str, object]) -> None:
        ctx["periodic"] = [asyncio.create_task(asyncio.Event().wait())]

    worker = Worker(
        functions=[func(job, name="job")],
        redis_settings=queue.redis_settings(redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        handle_signals=False,
        poll_delay=0.005,
        job_serializer=queue.dumps,
        job_deserializer=queue.loads,
    )
    main = asyncio.create_task(worker.main())
    pool = queue.connect(redis_url)
    try:
        await pool.enqueue_job("job", _job_id="j1")
        await asyncio.wait_for(started.wait(), 10)
        own = list(worker.ctx["periodic"])
        await aredis.client_pause(3000, all=False)  # writes wait: the job's result cannot be written yet
        release.set()
        await until(lambda: any("← j1:job" in r.getMessage() for r in caplog.records), "the job to return")
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)
        await close_worker(worker)
    finally:
        await aredis.client_unpause()
        await pool.aclose()
    assert all(task.done() for task in own), "the worker's own tasks were left running"


async def test_routines_added_changed_and_removed_by_file_and_api_between_ticks_fire_as_they_are_now_once(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    clock = Clock(START)
    settings = settings_for(tmp_path, redis_url)
    async with workers(settings, clock, 2) as pool:
        store = RedisStore(aredis)
        api = ApiRoutines(aredis, store.prefix)
        await settle(pool, store)
        (settings.routines_dir / "hourly.md").unlink()
        (settings.routines_dir / "quarter.md").write_text(HOURLY.replace("hourly", "quarter").replace("0 *", "15 *"))
        await api.put("late", HOURLY.replace("hourly", "late").replace("0 *", "45 *"))
        clock.now += 3600  # 01:30: quarter at 01:15 and late at 00:45 are due, hourly at 01:00 is gone
        await settle(pool, store)
        await api.put("late", HOURLY.replace("hourly", "late").replace("0 *", "50 *"))
        clock.now += 3600  # 02:30: late at 01:50, not 01:45
        await settle(pool, store)
        await api.delete("late")
        clock.now += 3600
        await settle(pool, store)
        fired = {name: sorted(await fired_slots(store, name)) for name in ("hourly", "quarter", "late")}
    minute = 60_000
    assert fired == {
        "hourly": [],
        "quarter": [hour(1) + 15 * minute, hour(2) + 15 * minute, hour(3) + 15 * minute],
        "late": [hour(0) + 45 * minute, hour(1) + 50 * minute],
    }


async def fired_slots(store: RedisStore, routine: str) -> list[int]:
    runs = await store.list_runs(routine=routine, limit=200)
    return [int(run.trigger.data["slot_ms"]) for run in runs if run.trigger.kind == "schedule"]


async def test_every_job_of_a_full_worker_can_wait_in_a_blocking_call_at_once(tmp_path: Path, redis_url: str) -> None:
    """A run's blocking call often waits (on a mirror's lock, a fetch, a push) while the run starts another
    (a spare work tree); with asyncio's default pool (cores + 4 threads) the later calls would queue
    behind the waiting ones. Here each of max_jobs jobs has two calls waiting for all the others."""
    jobs = (os.cpu_count() or 1) + 5  # more than asyncio's default pool can hold
    settings = replace(settings_for(tmp_path, redis_url), max_jobs=jobs)
    worker = create_worker(settings, handle_signals=False)
    ctx: dict[str, Any] = {}
    assert worker.on_startup is not None
    await worker.on_startup(ctx)
    try:
        everyone = threading.Barrier(2 * jobs, timeout=30)  # breaks (and fails the test) rather than hang
        waits = [asyncio.to_thread(everyone.wait) for _ in range(2 * jobs)]
        assert sorted(await asyncio.gather(*waits)) == list(range(2 * jobs))
    finally:
        await shutdown(ctx)


async def test_a_worker_with_a_model_key_makes_its_model_client_before_its_first_run(
    tmp_path: Path, redis_url: str
) -> None:
    settings = replace(settings_for(tmp_path, redis_url), anthropic_api_key="sk-ant-test-0123")
    worker = create_worker(settings, handle_signals=False)
    ctx: dict[str, Any] = {}
    assert worker.on_startup is not None
    await worker.on_startup(ctx)

    def refuse(**kwargs: Any) -> AnthropicModel:
        raise AssertionError("the model client was not made at startup")

    try:
        ctx["services"].make_model = refuse
        assert isinstance(await ctx["services"].model(), AnthropicModel)
    finally:
        await shutdown(ctx)


async def test_a_worker_whose_model_client_cannot_be_made_still_starts_and_says_why(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = replace(settings_for(tmp_path, redis_url), anthropic_api_key="sk-ant-test-0123")
    settings = replace(settings, anthropic_base_url="http://[::1")  # not a URL
    worker = create_worker(settings, handle_signals=False)
    ctx: dict[str, Any] = {}
    assert worker.on_startup is not None
    with caplog.at_level(logging.WARNING, logger="app.worker.worker"):
        await worker.on_startup(ctx)
    try:
        assert "could not make the model client" in caplog.text and "ANTHROPIC_BASE_URL" in caplog.text
    finally:
        await shutdown(ctx)


async def test_a_burst_of_jobs_over_two_workers_runs_each_once_and_never_more_than_max_jobs_at_once(
    tmp_path: Path, redis_url: str
) -> None:
    """The jobs one poll finds are started side by side; each still runs once, and a worker's max_jobs holds."""
    settings = replace(settings_for(tmp_path, redis_url), max_jobs=4)
    ran: Counter[str] = Counter()
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    release = asyncio.Event()

    async def job(ctx: dict[str, Any], name: str) -> None:
        me = ctx["worker_id"]
        running[me] = running.get(me, 0) + 1
        most[me] = max(most.get(me, 0), running[me])
        ran[name] += 1
        await release.wait()
        running[me] -= 1

    pool = queue.connect(redis_url)
    try:
        for n in range(20):
            await pool.enqueue_job("burst", f"job-{n}", _job_id=f"burst-{n}")
        async with workers(settings, count=2, tick_s=None, functions={"burst": func(job, name="burst")}):
            await until(lambda: sum(ran.values()) == 8, "both workers to fill up")
            assert list(most.values()) == [4, 4]
            release.set()
            await until(lambda: sum(ran.values()) == 20, "every job to run")
        assert set(ran.values()) == {1} and len(ran) == 20
        assert max(most.values()) == 4
    finally:
        await pool.aclose()


def probe_job() -> tuple[list[str], Function]:
    """The job `probe(name)`, and the names it was run with, in order."""
    ran: list[str] = []

    async def job(ctx: dict[str, Any], name: str) -> None:
        ran.append(name)

    return ran, func(job, name="probe")


async def test_a_worker_passes_over_the_job_of_a_run_whose_lease_is_held_until_the_lease_goes(
    tmp_path: Path, redis_url: str
) -> None:
    """A run's job stays queued while it runs; a worker with room does not start (or check) it again while
    the run's lease is held, and does once the lease is gone (a worker that died lets it lapse)."""
    settings = settings_for(tmp_path, redis_url)
    ran, probe = probe_job()
    pool = queue.connect(redis_url)
    try:
        leases = Leases(pool, "routines:", lease_s=60)
        assert await leases.take("r1", "worker-elsewhere")
        await pool.enqueue_job("probe", "held", _job_id=queue.run_job_id("r1"))
        await pool.enqueue_job("probe", "free", _job_id=queue.run_job_id("r2"))
        async with workers(settings, tick_s=None, functions={"probe": probe}):
            await until(lambda: ran == ["free"], "the job whose run holds no lease to run")
            for _ in range(5):  # polls that found the held run's job queued (5 ms apart)
                await asyncio.sleep(0.01)
            assert ran == ["free"]
            await leases.release("r1", "worker-elsewhere")
            await until(lambda: ran == ["free", "held"], "the job to run once its run's lease is gone")
    finally:
        await pool.aclose()


async def test_stopping_a_worker_stops_its_polling_before_it_cancels_its_jobs(tmp_path: Path, redis_url: str) -> None:
    """A job cancelled by the stop goes back to the queue; a worker still polling would take it again (`routines
    dev` did, failing the run's one try)."""
    settings = settings_for(tmp_path, redis_url)
    started = asyncio.Event()
    polling_when_cancelled: list[bool] = []
    worker = create_worker(settings, handle_signals=False, tick_s=None)

    async def job(ctx: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            polling_when_cancelled.append(not polling.done())
            raise

    worker.functions["blocks"] = func(job, name="blocks")
    pool = queue.connect(redis_url)
    try:
        await pool.enqueue_job("blocks", _job_id="blocks-1")
        polling = asyncio.create_task(worker.main())
        await asyncio.wait_for(started.wait(), 20)
        await stop_worker(worker, polling)
        assert polling_when_cancelled == [False]
        assert await pool.zscore("arq:queue", "blocks-1") is not None  # queued again, for the next worker
    finally:
        await pool.aclose()


class FailingLeases(Leases):
    """Leases whose read for a poll meets a Redis that fails."""

    async def held_of(self, run_ids: list[str]) -> set[str]:
        raise RedisConnectionError("Redis went away")


async def test_a_worker_whose_read_of_the_leases_fails_still_takes_jobs_as_arq_would(
    tmp_path: Path, redis_url: str
) -> None:
    settings = settings_for(tmp_path, redis_url)
    ran, probe = probe_job()
    pool = queue.connect(redis_url)
    try:
        async with workers(settings, tick_s=None, functions={"probe": probe}) as (worker,):
            await until(lambda: getattr(worker, "leases", None) is not None, "the worker to start")
            worker.leases = FailingLeases(pool, "routines:", lease_s=60)  # type: ignore[attr-defined]
            await pool.enqueue_job("probe", "free", _job_id=queue.run_job_id("r1"))
            await until(lambda: ran == ["free"], "the job to run")
    finally:
        await pool.aclose()


@pytest.mark.parametrize("started", [False, True], ids=["job taken, not started", "run's code before its lease"])
async def test_a_run_a_stopping_worker_stopped_before_its_lease_is_resumed_by_the_reaper(
    tmp_path: Path, redis_url: str, started: bool
) -> None:
    """arq's close cancels a job it has taken (its in-progress mark set) but not yet started: the run's code
    never runs, and the mark would keep the job from any worker for the job's timeout (3 h by default). Or
    the run's code is cancelled before it takes its lease: arq puts the job back, but fails it as a second
    try of a job that allows one. Either way the stopping worker hands the run back, and the reaper, seeing
    it live without a lease, resumes it."""
    settings = settings_for(tmp_path, redis_url)
    entered = asyncio.Event()

    async def before_the_lease() -> None:  # the run's first step, before its lease: here it never ends
        entered.set()
        await asyncio.Event().wait()

    worker = create_worker(settings, handle_signals=False, tick_s=None)
    pool = queue.connect(redis_url)
    store = RedisStore(pool)
    run = Run(id=new_run_id(), routine="hourly", repo="acme/api", trigger=Trigger("api", actor="test"))
    try:
        polling = asyncio.create_task(worker.main())
        await until(lambda: getattr(worker, "leases", None) is not None, "the worker to start")
        polling.cancel()  # as stop_worker does first: from here on the worker takes only what it is given
        await asyncio.gather(polling, return_exceptions=True)
        worker.ctx["services"].refresh_routines = before_the_lease
        await store.create_run(run)
        assert await queue.enqueue_run(pool, run.id)
        job_id = queue.run_job_id(run.id)
        await worker.start_jobs([job_id.encode()])  # taken: its in-progress mark is set, its task not yet run
        assert job_id in worker.tasks  # (no await until the close: the task must not take a step)
        if started:
            await asyncio.wait_for(entered.wait(), 10)
        await close_worker(worker)  # cancels the job: before its first step, or in the run's code
        assert entered.is_set() is started
        if not started:  # the mark outlives the stop: without the hand-back, no worker would take the job
            assert await pool.exists(f"arq:in-progress:{job_id}")
        leases = Leases(pool, "routines:", lease_s=60)
        assert await reap(store, pool, leases, max_resumes=3) == [queue.resume_job_id(run.id, 1)]
    finally:
        await pool.aclose()


async def test_only_the_runs_that_did_not_get_to_their_end_are_handed_back(aredis: aioredis.Redis) -> None:
    """A job that ended (its run over, or held elsewhere) may still be among the jobs a worker took: its run is
    not handed back, since its concurrency group may have passed on already."""

    async def ended() -> None:
        return None

    over, stopped = asyncio.create_task(ended()), asyncio.create_task(ended())
    stopped.cancel()
    await asyncio.gather(over, stopped, return_exceptions=True)
    claimed = {"run:over": over, "run:stopped": stopped, "delivery:d1": stopped}
    leases = Leases(aredis, "routines:", lease_s=60)
    assert await hand_back(leases, claimed, {"cut-short"}) == ["cut-short", "stopped"]
    assert await aredis.smembers(leases.live_key) == {b"cut-short", b"stopped"}  # type: ignore[misc]


def test_a_worker_raises_its_soft_limit_of_open_files_to_the_hard_one() -> None:
    """Started with a low soft limit (1,024 is usual), a worker takes what the hard limit allows: a few
    busy runs' egress connections must not starve it of descriptors."""
    script = (
        "import json, resource\n"
        "from app.worker.worker import raise_open_files\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))\n"
        "print(json.dumps([low, hard, raise_open_files(), resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    low, hard, (before, after), now = json.loads(out)
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert (before, after, now) == (low, expected, expected)
