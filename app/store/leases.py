"""Run leases and the reaper: a run whose worker died is resumed by another worker.

The worker executing a run holds `<prefix>lease:<run_id>` = its worker id, with a TTL of `lease_s`,
renewed every `lease_s / 3` by a background task and deleted at the end (both compare-and-set in
Lua, so a worker never renews or drops a lease another worker took). Taking the lease puts the run
id in the set `<prefix>live`, in the same transaction; a stopping worker also puts there the runs it
cut short, whether or not they had taken their lease (`hand_back`). The reaper, run by every worker,
re-enqueues each live run that is not over, whose lease nobody holds and whose last resume job is not
still waiting in the queue, as the job `run:<id>:resume:<n>` (arq refuses to start a job id whose
killed predecessor still has its in-progress key), at most `max_resumes` times (counting the resumes
of runs that had started); then the run fails with a reason.

A run whose job a worker took (arq's in-progress mark) but which never took its lease, because that
worker was killed in between, is in no live set. `hand_back_orphans`, run about every `lease_s` by
one worker at a time, finds such jobs at the head of arq's queue: taken, their run not live, not over
and its lease free, seen so in sweeps at least `2 * lease_s` apart (a live worker takes the lease
within milliseconds). It marks their runs live, and the reaper resumes them as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus
from redis import asyncio as aioredis

from app.core.domain import Event, Run, RunState
from app.core.errors import InvalidTransition, RunNotFound
from app.store import queue
from app.store.runs import RedisStore

log = logging.getLogger(__name__)

_RENEW = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"
)
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"


RESUMES_KEEP_S = 7 * 86400  # how long a run's resume counts are kept
ORPHAN_SCAN = 2_000  # jobs read from the head of arq's queue per sweep: taken jobs sit there, oldest first
_STATUS_BATCH = 50  # job statuses asked for at once (each a transaction of its own)


def new_worker_id() -> str:
    return f"worker-{secrets.token_hex(6)}"


@dataclass
class Leases:
    """Leases on runs, under `prefix` in `redis`, each held for `lease_s` seconds unless renewed
    (every `lease_s / 3`, waited with `sleep`)."""

    redis: aioredis.Redis
    prefix: str
    lease_s: float
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)

    def key(self, run_id: str) -> str:
        return f"{self.prefix}lease:{run_id}"

    @property
    def live_key(self) -> str:
        return f"{self.prefix}live"

    async def take(self, run_id: str, holder: str) -> bool:
        """Take the run's lease (False: another worker holds it) and mark the run live, in one
        transaction: a worker killed in between cannot hold a lease on a run the reaper does not see. When
        the lease is held elsewhere the run is live already, and the mark changes nothing."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.key(run_id), holder, nx=True, px=self._ms)
            pipe.sadd(self.live_key, run_id)
            taken, _ = await pipe.execute()
        return bool(taken)

    async def hand_back(self, run_ids: list[str]) -> None:
        """Mark runs live without taking their leases: at its next pass the reaper resumes each that is
        not over and whose lease nobody holds (and forgets those that are over). A stopping worker hands
        back the runs it cut short (app.worker.worker.hand_back): one stopped before it took its lease
        would otherwise wait until its job's in-progress mark lapsed (the job's timeout), or never run
        again (arq fails a cancelled job's second try when, as a run's, it allows one)."""
        if run_ids:
            await self.redis.sadd(self.live_key, *run_ids)  # type: ignore[misc]

    async def held_of(self, run_ids: list[str]) -> set[str]:
        """Which of `run_ids` some worker holds the lease of now (one round trip)."""
        if not run_ids:
            return set()
        held = await self.redis.mget([self.key(run_id) for run_id in run_ids])
        return {run_id for run_id, holder in zip(run_ids, held, strict=True) if holder is not None}

    async def renew(self, run_id: str, holder: str) -> bool:
        """Extend the lease for another `lease_s`; False when `holder` no longer holds it."""
        return bool(await self.redis.eval(_RENEW, 1, self.key(run_id), holder, str(self._ms)))  # type: ignore[misc]

    async def release(self, run_id: str, holder: str) -> None:
        """Drop the lease (if `holder` still holds it) and the run's live mark: the run is over."""
        await self.redis.eval(_RELEASE, 1, self.key(run_id), holder)  # type: ignore[misc]
        await self.redis.srem(self.live_key, run_id)  # type: ignore[misc]

    async def drop(self, run_id: str, holder: str) -> None:
        """Drop the lease (if `holder` still holds it) but leave the run live: it is not over, and the
        reaper hands it to another worker at its next pass instead of after the lease would expire."""
        await self.redis.eval(_RELEASE, 1, self.key(run_id), holder)  # type: ignore[misc]

    @contextlib.asynccontextmanager
    async def held(self, run_id: str, holder: str) -> AsyncIterator[bool]:
        """Hold the lease while the block runs (yields False, holding nothing, when another worker has it).

        When the block ends, the run is over and the lease released; when it is cancelled (the worker
        is stopping), the lease is dropped and the run stays live, to be resumed elsewhere."""
        if not await self.take(run_id, holder):
            yield False
            return
        renewer = asyncio.create_task(self._renew_forever(run_id, holder), name=f"lease:{run_id}")
        over = True
        try:
            yield True
        except asyncio.CancelledError:
            over = False
            raise
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            await (self.release if over else self.drop)(run_id, holder)

    async def _renew_forever(self, run_id: str, holder: str) -> None:
        while True:
            await self.sleep(self.lease_s / 3)
            try:
                if not await self.renew(run_id, holder):
                    log.error("run %s: the lease of %s was lost; another worker may resume the run", run_id, holder)
                    return
            except Exception:
                log.exception("run %s: could not renew the lease; trying again", run_id)

    @property
    def _ms(self) -> int:
        return max(1, int(self.lease_s * 1000))


async def reap(store: RedisStore, pool: ArqRedis, leases: Leases, *, max_resumes: int) -> list[str]:
    """Re-enqueue every live run whose lease expired; returns the job ids enqueued. Safe on many workers:
    a claim per run and lease period lets one reaper enqueue, and the lease lets one job execute."""
    enqueued: list[str] = []
    for raw in await leases.redis.smembers(leases.live_key):  # type: ignore[misc]
        run_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        if await leases.redis.exists(leases.key(run_id)):
            continue
        try:
            run = await store.get_run(run_id)
        except RunNotFound:
            await leases.redis.srem(leases.live_key, run_id)  # type: ignore[misc]
            continue
        if run.state.terminal:
            await leases.redis.srem(leases.live_key, run_id)  # type: ignore[misc]
            continue
        if await _resume_waits(pool, leases, run_id):
            continue
        claim = f"{leases.prefix}reaping:{run_id}"
        if not await leases.redis.set(claim, "1", nx=True, px=max(3000, int(leases.lease_s * 3000))):
            continue
        job_id = await _resume_or_fail(
            store, pool, leases, run_id, max_resumes, started=run.state is not RunState.QUEUED
        )
        if job_id is not None:
            enqueued.append(job_id)
    return enqueued


async def _resume_waits(pool: ArqRedis, leases: Leases, run_id: str) -> bool:
    """Whether the run's last resume job still waits in the queue for a worker: it takes the lease when it
    starts, so another resume would only queue behind it and spend an attempt (while workers are busy, a
    backlog outlasts the reaper's claim). A resume job taken but not started is not waiting: a worker
    stopped before it started it hands its run back, and that job's in-progress mark outlasts the stop."""
    attempt = await leases.redis.get(f"{leases.prefix}resumes:{run_id}")
    if attempt is None:
        return False
    status = await Job(queue.resume_job_id(run_id, int(attempt)), pool).status()
    return status in (JobStatus.queued, JobStatus.deferred)


async def _resume_or_fail(
    store: RedisStore, pool: ArqRedis, leases: Leases, run_id: str, max_resumes: int, *, started: bool
) -> str | None:
    """Enqueue the run's next resume job, or fail the run once it was resumed `max_resumes` times. Only
    resumes of a run that had started count (`started`: it left `queued`): a run still queued never ran
    anything that could have stopped its worker, so a worker killed or stopped before it began the run
    does not spend the run's resumes (the job ids still count every resume)."""
    spent_key = f"{leases.prefix}resumes-spent:{run_id}"
    async with leases.redis.pipeline(transaction=True) as pipe:
        pipe.incr(f"{leases.prefix}resumes:{run_id}")
        pipe.expire(f"{leases.prefix}resumes:{run_id}", RESUMES_KEEP_S)
        if started:
            pipe.incr(spent_key)
            pipe.expire(spent_key, RESUMES_KEEP_S)
        else:
            pipe.get(spent_key)
        results = await pipe.execute()
    attempt, spent = int(results[0]), int(results[2] or 0)
    if spent > max_resumes:
        message = (
            f"the worker running this run stopped {spent} times (killed or lost); it was resumed "
            f"{max_resumes} times and is given up — look at the workers' logs, then fire the routine again"
        )
        await store.append_event(run_id, Event("run.error", {"error": message}))
        with contextlib.suppress(InvalidTransition):
            await store.transition(run_id, RunState.FAILED, error=message)
        await leases.redis.srem(leases.live_key, run_id)  # type: ignore[misc]
        return None
    job_id = queue.resume_job_id(run_id, attempt)
    await pool.enqueue_job(queue.RUN_JOB, run_id, _job_id=job_id)
    log.warning("run %s lost its worker; resuming it as job %s", run_id, job_id)
    return job_id


async def hand_back_orphans(
    store: RedisStore,
    pool: ArqRedis,
    leases: Leases,
    *,
    clock: Callable[[], float] | None = None,
    scan: int = ORPHAN_SCAN,
) -> list[str]:
    """Mark live the runs whose job a worker took but which never took their lease; returns those runs.

    arq marks a job in progress as it takes it, and keeps the mark for the job's timeout plus 10 s. A
    worker killed before its run took the lease leaves the run queued, in no live set, behind that mark:
    while it lasts no worker starts the job, and once it lapses arq fails the job as a second try (or
    runs it, if the kill came before arq counted the try). A run job among the first `scan` of arq's
    queue (a worker takes only jobs near its head) that is in progress while its run is not live, not
    over and nobody holds its lease is noted with the time it was first seen so, by `clock` (default:
    the Redis server's, one clock for every worker), under `<prefix>orphan:<job id>`; the note is
    dropped when the job is seen held, live or over. Seen so again `2 * lease_s` later, its worker is
    gone, and its run is handed to the reaper (`Leases.hand_back`). A live worker that took a job takes
    the lease within milliseconds; one that took longer only costs the run a second job (its resumes
    count only once it began), and the lease still lets one job execute it at a time. Safe on many
    workers at once."""
    grace = 2 * leases.lease_s
    jobs: dict[str, str] = {}
    for raw in await pool.zrange(pool.default_queue_name, 0, scan - 1):
        job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        run_id = queue.run_of_job(job_id)
        if run_id is not None:
            jobs[job_id] = run_id
    if not jobs:
        return []
    runs = sorted(set(jobs.values()))
    held = await leases.held_of(runs)
    live = {run_id for run_id, member in zip(runs, await pool.smismember(leases.live_key, runs), strict=True) if member}  # type: ignore[misc]
    waiting = [job_id for job_id, run_id in jobs.items() if run_id not in held and run_id not in live]
    statuses: list[JobStatus] = []
    for i in range(0, len(waiting), _STATUS_BATCH):
        statuses += await asyncio.gather(*(Job(job_id, pool).status() for job_id in waiting[i : i + _STATUS_BATCH]))
    taken = [job_id for job_id, status in zip(waiting, statuses, strict=True) if status is JobStatus.in_progress]
    records = await pool.mget([store.key("run", jobs[job_id]) for job_id in taken]) if taken else []
    suspects = [job_id for job_id, raw in zip(taken, records, strict=True) if _not_over(jobs[job_id], raw)]
    cleared = [_orphan_key(leases, job_id) for job_id in jobs.keys() - set(suspects)]
    if cleared:  # a note holds only while every sweep sees the job so
        await pool.delete(*cleared)
    if not suspects:
        return []
    now = clock() if clock is not None else await _server_time(pool)
    async with pool.pipeline(transaction=False) as pipe:
        for job_id in suspects:
            pipe.set(_orphan_key(leases, job_id), repr(now), nx=True, px=max(1, int(grace * 4000)))
            pipe.get(_orphan_key(leases, job_id))
        noted = (await pipe.execute())[1::2]
    orphans = [job_id for job_id, first in zip(suspects, noted, strict=True) if first and now - float(first) >= grace]
    if not orphans:
        return []
    found = sorted({jobs[job_id] for job_id in orphans})
    await leases.hand_back(found)
    await pool.delete(*(_orphan_key(leases, job_id) for job_id in orphans))
    for run_id in found:
        log.warning("run %s: the worker that took its job stopped before the run began; handed to the reaper", run_id)
    return found


def _orphan_key(leases: Leases, job_id: str) -> str:
    return f"{leases.prefix}orphan:{job_id}"


def _not_over(run_id: str, raw: bytes | None) -> bool:
    """Whether the stored run `raw` exists and is not over (an unreadable one is logged and passed over)."""
    if raw is None:
        return False
    try:
        return not Run.from_json(json.loads(raw)).state.terminal
    except (ValueError, KeyError, TypeError) as exc:
        log.error(
            "run %s: its record cannot be read (%s: %s); the orphan sweep passes over it",
            run_id,
            type(exc).__name__,
            exc,
        )
        return False


async def _server_time(pool: ArqRedis) -> float:
    seconds, microseconds = await pool.time()
    return float(seconds) + float(microseconds) / 1_000_000
