"""Leases on runs and the reaper that re-enqueues runs whose worker died."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus
from redis import asyncio as aioredis

from app.core.domain import Run, RunState, Trigger, new_run_id
from app.store import queue
from app.store.leases import Leases, hand_back_orphans, reap
from app.store.runs import RedisStore
from tests.support.clock import Clock, Ticks
from tests.support.takers import killed_after_taking


async def test_one_holder_at_a_time_and_only_the_holder_renews_or_releases(aredis: aioredis.Redis) -> None:
    leases = Leases(aredis, "routines:", lease_s=0.3)
    assert await leases.take("r1", "worker-a")
    assert not await leases.take("r1", "worker-b")
    assert not await leases.renew("r1", "worker-b") and await leases.renew("r1", "worker-a")
    await leases.release("r1", "worker-b")
    assert await aredis.get(leases.key("r1")) == b"worker-a"
    await leases.release("r1", "worker-a")
    assert await aredis.get(leases.key("r1")) is None and not await aredis.sismember(leases.live_key, "r1")  # type: ignore[misc]


async def test_held_of_names_the_runs_whose_lease_someone_holds(aredis: aioredis.Redis) -> None:
    leases = Leases(aredis, "routines:", lease_s=60)
    assert await leases.take("r1", "worker-a") and await leases.take("r3", "worker-b")
    assert await leases.held_of(["r1", "r2", "r3"]) == {"r1", "r3"}
    await leases.release("r1", "worker-a")
    assert await leases.held_of(["r1", "r2", "r3"]) == {"r3"}
    assert await leases.held_of([]) == set()


async def test_a_held_lease_outlives_its_ttl_while_renewed(aredis: aioredis.Redis) -> None:
    ticks = Ticks()
    leases = Leases(aredis, "routines:", lease_s=60, sleep=ticks)
    async with leases.held("r1", "worker-a") as held:
        assert held
        for _ in range(3):
            await aredis.pexpire(leases.key("r1"), 50)  # as if the lease were about to run out
            await ticks.tick()  # the renewer's wait ends; it renews and waits again
            assert await aredis.pttl(leases.key("r1")) > 59_000
        assert ticks.waits == [20.0] * 4
        async with leases.held("r1", "worker-b") as other:
            assert not other
    assert await aredis.get(leases.key("r1")) is None


async def test_reaper_resumes_a_run_whose_lease_expired_then_gives_up(redis_url: str) -> None:
    pool = queue.connect(redis_url)
    store = RedisStore(pool)
    leases = Leases(pool, "routines:", lease_s=0.3)
    run = Run(id=new_run_id(), routine="nightly", repo="acme/calc", trigger=Trigger("api", actor="test"))
    await store.create_run(run)
    await store.transition(run.id, RunState.PREPARING)
    await store.transition(run.id, RunState.RUNNING)
    try:
        assert await leases.take(run.id, "worker-a")
        assert await reap(store, pool, leases, max_resumes=1) == []
        await pool.delete(leases.key(run.id))
        assert await reap(store, pool, leases, max_resumes=1) == [f"run:{run.id}:resume:1"]
        assert await reap(store, pool, leases, max_resumes=1) == [], "one reaper per lease period"
        assert await _job_ids(pool) == {f"run:{run.id}:resume:1"}
        await pool.zrem("arq:queue", f"run:{run.id}:resume:1")  # the resume job ran, and its worker died too
        await pool.delete(f"arq:job:run:{run.id}:resume:1", f"routines:reaping:{run.id}")
        assert await reap(store, pool, leases, max_resumes=1) == []
        failed = await store.get_run(run.id)
        assert failed.state is RunState.FAILED and "resumed 1 times" in (failed.error or "")
        assert not await pool.sismember(leases.live_key, run.id)  # type: ignore[misc]
    finally:
        await pool.aclose()


async def _lost(pool: ArqRedis, run_id: str, job_id: str) -> None:
    """The job ran and its worker died (arq dropped it), and the reaper's claim on the run lapsed."""
    await pool.zrem("arq:queue", job_id)
    await pool.delete(f"arq:job:{job_id}", f"routines:reaping:{run_id}")


async def _job_ids(pool: ArqRedis) -> set[str]:
    return {str(job.job_id) for job in await pool.queued_jobs()}


async def test_a_cancelled_holder_drops_the_lease_but_leaves_the_run_live(aredis: aioredis.Redis) -> None:
    leases = Leases(aredis, "routines:", lease_s=60, sleep=Ticks())
    entered = asyncio.Event()

    async def work() -> None:
        async with leases.held("r1", "worker-a"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await aredis.get(leases.key("r1")) is None, "another worker may take it at once"
    assert await aredis.sismember(leases.live_key, "r1"), "the reaper still sees the run"  # type: ignore[misc]


async def test_reaper_does_not_resume_again_while_the_last_resume_waits_in_the_queue(redis_url: str) -> None:
    """With every worker busy, a resume job can wait longer than the reaper's claim lasts: resuming the run
    again each time would only queue more jobs behind it, spend its resumes and fail a run that never ran."""
    pool = queue.connect(redis_url)
    store = RedisStore(pool)
    leases = Leases(pool, "routines:", lease_s=0.3)
    run = Run(id=new_run_id(), routine="nightly", repo="acme/calc", trigger=Trigger("api", actor="test"))
    await store.create_run(run)
    try:
        await leases.hand_back([run.id])
        first = queue.resume_job_id(run.id, 1)
        assert await reap(store, pool, leases, max_resumes=1) == [first]
        for _ in range(3):  # reaper passes after each claim lapsed, the resume job still queued
            await pool.delete(f"routines:reaping:{run.id}")
            assert await reap(store, pool, leases, max_resumes=1) == []
        assert await _job_ids(pool) == {first} and (await store.get_run(run.id)).state is RunState.QUEUED
    finally:
        await pool.aclose()


async def test_only_the_resumes_of_a_run_that_began_count_toward_the_limit(redis_url: str) -> None:
    """A worker killed or stopped before it began a run (the run still queued) is not the run's doing: the
    resume spends nothing. Once a run began, each resume counts, and past `max_resumes` the run fails."""
    pool = queue.connect(redis_url)
    store = RedisStore(pool)
    leases = Leases(pool, "routines:", lease_s=0.3)
    run = _run()
    await store.create_run(run)
    try:
        await leases.hand_back([run.id])  # its worker stopped before it began the run
        jobs = [queue.resume_job_id(run.id, n) for n in (1, 2, 3)]
        assert await reap(store, pool, leases, max_resumes=1) == [jobs[0]]
        await _lost(pool, run.id, jobs[0])  # that job's worker was killed before it began the run too
        assert await reap(store, pool, leases, max_resumes=1) == [jobs[1]], "a run that never began spent nothing"
        await store.transition(run.id, RunState.PREPARING)  # this one began it, and its worker died in turn
        await _lost(pool, run.id, jobs[1])
        assert await reap(store, pool, leases, max_resumes=1) == [jobs[2]], "its one resume"
        await _lost(pool, run.id, jobs[2])
        assert await reap(store, pool, leases, max_resumes=1) == []
        failed = await store.get_run(run.id)
        assert failed.state is RunState.FAILED and "stopped 2 times" in (failed.error or ""), failed.error
    finally:
        await pool.aclose()


async def test_a_run_whose_worker_was_killed_between_its_job_and_its_lease_is_resumed(redis_url: str) -> None:
    """A worker SIGKILLed after arq took the run's job (in-progress mark set, try counted) but before the run
    took its lease: no live set holds the run, and arq would fail the job as a second try once its mark
    lapses, hours later. The sweep notes it, hands it to the reaper when seen so again, and it is resumed."""
    clock = Clock(1000.0)
    async with _orphaned(redis_url) as (pool, store, run):
        leases = Leases(pool, "routines:", lease_s=0.3)
        job = Job(queue.run_job_id(run.id), pool)
        assert await job.status() is JobStatus.in_progress
        assert await hand_back_orphans(store, pool, leases, clock=clock) == [], "first seen: perhaps a live worker"
        assert await reap(store, pool, leases, max_resumes=1) == []
        clock.advance(0.5)
        assert await hand_back_orphans(store, pool, leases, clock=clock) == [], "not yet 2 leases later"
        clock.advance(0.1)
        assert await hand_back_orphans(store, pool, leases, clock=clock) == [run.id]
        assert await reap(store, pool, leases, max_resumes=1) == [queue.resume_job_id(run.id, 1)]
        assert await hand_back_orphans(store, pool, leases, clock=clock) == [], "noted afresh, handed back once"
        assert await job.status() is JobStatus.in_progress, "the killed job is left to arq"


async def test_the_sweep_passes_over_queued_jobs_and_held_live_or_ended_runs(redis_url: str) -> None:
    pool = queue.connect(redis_url)
    store = RedisStore(pool)
    leases = Leases(pool, "routines:", lease_s=0.3)
    clock = Clock(1000.0)
    held, over, orphan, resumed, waiting = (_run() for _ in range(5))
    try:
        for run in (held, over, orphan, resumed):
            await store.create_run(run)
        for run in (held, over, orphan):
            assert await queue.enqueue_run(pool, run.id)
        await leases.hand_back([resumed.id])  # live: its resume job is the reaper's to watch
        await pool.enqueue_job(queue.RUN_JOB, resumed.id, _job_id=queue.resume_job_id(resumed.id, 1))
        taken = set(await asyncio.to_thread(killed_after_taking, redis_url, 4))
        assert taken == {held.id, over.id, orphan.id, resumed.id}
        await store.create_run(waiting)
        assert await queue.enqueue_run(pool, waiting.id)  # queued after the kill: no worker took it yet
        assert await leases.take(held.id, "worker-b")  # another worker resumed this one already
        await store.transition(over.id, RunState.CANCELLED)
        assert await hand_back_orphans(store, pool, leases, clock=clock) == []
        clock.advance(0.6)
        assert await hand_back_orphans(store, pool, leases, clock=clock) == [orphan.id]
        assert await Job(queue.run_job_id(waiting.id), pool).status() is JobStatus.queued
        assert set(map(bytes.decode, await pool.smembers(leases.live_key))) == {held.id, orphan.id, resumed.id}  # type: ignore[misc]
    finally:
        await pool.aclose()


async def test_a_sighting_is_forgotten_once_the_run_is_seen_with_its_lease(redis_url: str) -> None:
    """A slow live worker takes the lease after the first sighting: the note goes, and only two sightings in
    a row without the lease hand a run back."""
    clock = Clock(1000.0)
    async with _orphaned(redis_url) as (pool, store, run):
        leases = Leases(pool, "routines:", lease_s=0.3)
        assert await hand_back_orphans(store, pool, leases, clock=clock) == []
        assert await leases.take(run.id, "worker-b")
        clock.advance(0.6)
        assert await hand_back_orphans(store, pool, leases, clock=clock) == []
        await leases.release(run.id, "worker-b")  # lease and live mark gone, the run not over: an orphan again
        assert await hand_back_orphans(store, pool, leases, clock=clock) == [], "seen afresh"
        clock.advance(0.6)
        assert await hand_back_orphans(store, pool, leases, clock=clock) == [run.id]


async def test_the_sweep_reads_the_time_from_redis_by_default(redis_url: str) -> None:
    async with _orphaned(redis_url) as (pool, store, run):
        leases = Leases(pool, "routines:", lease_s=60)
        assert await hand_back_orphans(store, pool, leases) == []
        seconds, _ = await pool.time()
        noted = await pool.get(f"routines:orphan:{queue.run_job_id(run.id)}")
        assert noted is not None and abs(float(noted) - seconds) < 5


@contextlib.asynccontextmanager
async def _orphaned(redis_url: str) -> AsyncIterator[tuple[ArqRedis, RedisStore, Run]]:
    """A queued run whose job a worker took and was killed holding (tests.support.takers), with the
    queue's client and the store; the client is closed at the end."""
    pool = queue.connect(redis_url)
    store = RedisStore(pool)
    run = _run()
    await store.create_run(run)
    try:
        assert await queue.enqueue_run(pool, run.id)
        assert await asyncio.to_thread(killed_after_taking, redis_url) == [run.id]
        yield pool, store, run
    finally:
        await pool.aclose()


def _run() -> Run:
    return Run(id=new_run_id(), routine="nightly", repo="acme/calc", trigger=Trigger("api", actor="test"))
