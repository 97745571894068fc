"""The arq worker: runs jobs and periodic tasks, owns its resources from startup to shutdown.

Schedules fire exactly once however many workers run: every worker ticks, reads the shared last-tick
time from Redis, asks the scheduler for the slots due in (last, now], and enqueues one `fire_slot` job
per slot with the job id `<routine>:<slot_ms>`. arq refuses a job id that is queued, running or has a
kept result, atomically, so a slot seen by several workers is enqueued once; the kept result
(`SLOT_KEEP_S`) outlives any window that can cover the slot again, because the last-tick time only
moves forward. The run ids travel in the job, so a retried `fire_slot` never creates a second run.
Every worker also pumps GitHub deliveries from the web process's stream into `handle_delivery` jobs
(app.triggers.intake.DeliveryPump).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from arq import Worker
from arq.worker import func
from redis.exceptions import RedisError

from app.core.config import Settings
from app.forge.github_app import GitHubApp
from app.models.anthropic import AnthropicModel
from app.services import Services, build
from app.store import queue
from app.store.archive import RunArchive, archive_old_runs
from app.store.leases import Leases, hand_back_orphans, new_worker_id, reap
from app.store.metrics import WORKER_INFO_KEY
from app.triggers.dispatch import restart_stalled_groups
from app.triggers.intake import DELIVERY_JOB, DeliveryPump
from app.triggers.recovery import SweepPolicy, sweep
from app.worker.jobs import FIRE_SLOT_JOB, SLOT_KEEP_S, fire_slot, handle_delivery, run_routine
from app.worker.ticks import Periodic, ScheduleTicker, repeat

log = logging.getLogger(__name__)

DEFAULT_TICK_S = 5.0
THREADS_PER_JOB = 2
SPARE_THREADS = 4
DESCRIBE_S = 300.0
RETENTION_S = 600.0


def create_worker(
    settings: Settings,
    *,
    handle_signals: bool = True,
    burst: bool = False,
    clock: Callable[[], float] = time.time,
    tick_s: float | None = None,
    periodic: Sequence[Periodic] = (),
    own_process: bool = False,
) -> Worker:
    """An arq Worker whose startup builds the Services and starts the periodic tasks — the schedule tick
    every `tick_s` (default: settings.schedule_tick_s), then `periodic` — and whose shutdown stops them
    and closes the Services. With `own_process` (the process runs this worker's event loop and no other:
    `routines worker`, `routines dev`), what startup made is moved out of the cyclic collector's reach
    (gc.freeze: a full collection of it took 60-100 ms on an idle machine, several times that on cores
    busy with a burst of runs, with the event loop stopped), and on Python 3.11 the loop waits for its
    children on pidfds, as 3.12 does by itself, instead of starting a thread per child and waiting for
    it to run (a sandbox start makes several children; a burst starts dozens at once)."""
    if settings.redis_url is None:
        raise ValueError("create_worker needs settings.redis_url")
    ticker = ScheduleTicker(clock, settings.max_runs_per_day)
    every_s = tick_s if tick_s is not None else settings.schedule_tick_s
    sweep = Periodic("delivery-recovery", settings.delivery_sweep_s, _recover_deliveries)
    worker_id = new_worker_id()

    async def reaper(services: Services) -> object:
        leases = Leases(services.store.redis, services.store.prefix, settings.lease_s)
        resumed = await reap(services.store, services.pool, leases, max_resumes=settings.max_resumes)
        stalled = await restart_stalled_groups(services.store, services.pool)
        for run_id in stalled:
            log.warning("run %s held its concurrency group but had no job (a worker died); enqueued", run_id)
        return [*resumed, *stalled]

    async def orphans(services: Services) -> object:
        """One worker at a time sweeps, about every lease: its cost grows with the queue, not the workers."""
        claim = services.store.prefix + "orphan-sweep"
        if not await services.store.redis.set(claim, worker_id, nx=True, px=max(1, int(settings.lease_s * 1000))):
            return []
        leases = Leases(services.store.redis, services.store.prefix, settings.lease_s)
        return await hand_back_orphans(services.store, services.pool, leases)

    started = time.time()

    async def describe(services: Services) -> object:
        """Who this worker is, for the console's health page (when it was last seen is the metrics heartbeat's)."""
        about = {"id": worker_id, "host": socket.gethostname(), "pid": os.getpid(), "jobs": settings.max_jobs}
        await services.store.redis.hset(  # type: ignore[misc]
            services.store.prefix + WORKER_INFO_KEY, worker_id, json.dumps({**about, "started": started})
        )
        return None

    async def retention(services: Services) -> object:
        if settings.retention_days is None:
            return 0
        archive = RunArchive(settings.archive_folder)
        return await archive_old_runs(services.store, archive, days=settings.retention_days)

    tasks = [
        Periodic("schedule", every_s, ticker.tick),
        sweep,
        Periodic("reaper", settings.reaper_s, reaper),
        Periodic("orphans", settings.lease_s, orphans),
        Periodic("describe", DESCRIBE_S, describe),
        Periodic("retention", RETENTION_S, retention),
        *periodic,
    ]

    async def startup(ctx: dict[str, Any]) -> None:
        before, after = raise_open_files()
        if after != before:
            log.info("open files: soft limit raised from %d to %d", before, after)
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(thread_pool_size(settings.max_jobs), thread_name_prefix="routines-worker")
        )
        services = ctx["services"] = await build(settings)
        if settings.anthropic_api_key:
            try:  # made now, in a thread, rather than on the loop during the first run
                await services.model()
            except Exception as exc:  # the worker still starts: each run will fail with what is wrong
                log.warning(
                    "could not make the model client (%s: %s); check ANTHROPIC_BASE_URL and the system's CA "
                    "certificates (SSL_CERT_FILE); runs will fail until it can be made",
                    type(exc).__name__,
                    exc,
                )
        services.metrics.beat_as(worker_id)  # /metrics counts the workers seen in the last minute
        ctx["ticker"], ctx["max_runs_per_day"] = ticker, ticker.max_runs_per_day
        ctx["worker_id"], ctx["leases"] = (
            worker_id,
            Leases(services.store.redis, services.store.prefix, settings.lease_s),
        )
        worker.leases = ctx["leases"]
        ctx["claimed"] = worker.tasks  # the jobs arq took, by id: their runs are handed back at shutdown
        ctx["unfinished"] = set()  # the runs whose code is under way (jobs.run_routine); arq copies ctx per job
        ctx["stop"] = stop = asyncio.Event()
        ctx["periodic"] = [asyncio.create_task(repeat(t, services, stop), name=f"periodic:{t.name}") for t in tasks]
        pump = DeliveryPump(services.pool, consumer=worker_id)
        ctx["periodic"].append(asyncio.create_task(pump.run(stop), name="delivery-pump"))
        await asyncio.to_thread(_warm_up)
        if own_process:
            gc.collect()  # what startup left as garbage is collected, not frozen
            gc.freeze()
            children = "asyncio's default"
            if sys.version_info < (3, 12) and _pidfds_work():
                # only this loop may make children from now on: the watcher is the process's and reaps on it
                watcher = asyncio.PidfdChildWatcher()
                watcher.attach_loop(asyncio.get_running_loop())
                asyncio.set_child_watcher(watcher)
                children = "pidfds"
            frozen = gc.get_freeze_count()
            log.info("worker ready: %d startup objects frozen; children waited for on %s", frozen, children)

    worker = _Worker(
        functions=[
            func(run_routine, name=queue.RUN_JOB, max_tries=1),
            func(fire_slot, name=FIRE_SLOT_JOB, max_tries=3, keep_result=SLOT_KEEP_S),
            func(handle_delivery, name=DELIVERY_JOB, max_tries=5),
        ],
        redis_settings=queue.redis_settings(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        poll_delay=settings.poll_delay_ms / 1000,
        max_jobs=settings.max_jobs,
        job_timeout=settings.job_timeout_s,
        keep_result=3600,
        job_serializer=queue.dumps,
        job_deserializer=queue.loads,
        handle_signals=handle_signals,
        burst=burst,
    )
    return worker


def _pidfds_work() -> bool:
    """Whether this kernel and its seccomp profile let us open pidfds (Linux 5.3+; older container
    runtimes refuse the call), as Python 3.12 checks before it waits for children on them."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def raise_open_files() -> tuple[int, int]:
    """Raise this process's soft limit of open files to its hard limit, and return (before, after). Each
    run's egress proxy may hold a few hundred descriptors (app.sandbox.egress.proxy.EgressLimits), its
    sandbox and git a few more; the usual soft limit of 1,024 would let a handful of busy runs starve the
    worker of the descriptors it needs to reach Redis or start another sandbox."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the limit of open files from %d to %d: %s", soft, target, exc)
            return soft, soft
        return soft, target
    return soft, soft


def _warm_up() -> None:
    """Build what the first run would otherwise build on the event loop (the model SDK's first request)."""
    try:
        AnthropicModel.warm()
    except Exception:  # a worker that cannot warm up still works; its first run is slower
        log.warning("could not warm up the model client", exc_info=True)


class _Worker(Worker):
    """arq's Worker, starting the jobs one poll found side by side rather than one after another.

    Each start is arq's own (`start_jobs`: its semaphore, its in-progress key, its task) but takes a few
    Redis round trips, each waiting its turn on an event loop busy with the runs already started: one by
    one, the last of a burst of twenty started seconds after the first. The ids are dealt round-robin to
    as many arq walks as the worker has free jobs, so that each walk still passes over jobs another
    worker took, and arq's own count of running jobs (checked before each start) never stops a walk while
    the worker has room."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.leases: Leases | None = None
        """Set at startup: a run whose lease is held runs somewhere, and its job is passed over."""

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        job_ids = await self._not_running(job_ids)
        walks = min(self.max_jobs - self.job_counter, len(job_ids))
        if walks <= 1:
            await super().start_jobs(job_ids)
            return
        start = super().start_jobs
        await asyncio.gather(*(start(job_ids[i::walks]) for i in range(walks)))

    async def _not_running(self, job_ids: list[bytes]) -> list[bytes]:
        """`job_ids` less the jobs of runs whose lease is held: a run's job stays in arq's queue until it
        ends, and arq checks every queued id at every poll (three Redis round trips each) while the
        worker has room, so each worker would check every running run's job over and over. One read of
        the leases passes over them. A job claimed but whose run has not yet taken its lease is still
        checked, by arq, as before; a lease that lapses (its worker died) no longer hides its job."""
        runs = {job_id: queue.run_of_job(job_id.decode()) for job_id in job_ids}
        asked = [run_id for run_id in runs.values() if run_id is not None]
        if self.leases is None or not asked:
            return job_ids
        try:
            held = await self.leases.held_of(asked)
        except (RedisError, OSError):  # arq's own calls meet the same Redis and say what is wrong
            return job_ids
        return [job_id for job_id, run_id in runs.items() if run_id is None or run_id not in held]


def thread_pool_size(max_jobs: int) -> int:
    """Threads for the blocking calls of `max_jobs` concurrent runs (asyncio's default is cores + 4).

    A run's blocking call often waits rather than works: on a mirror's lock, a fetch, a push, a
    sandbox's files. With too few threads, runs that wait hold every thread and a run that is starting
    queues behind them; so each job gets its own, and one more for the call it makes meanwhile (a
    spare work tree made in the background, a cleanup)."""
    return THREADS_PER_JOB * max_jobs + SPARE_THREADS


async def shutdown(ctx: dict[str, Any]) -> None:
    """Stop the worker's own tasks, hand back the runs of the jobs it took, and close its Services; a
    second call does nothing."""
    running: list[asyncio.Task[None]] = ctx.pop("periodic", [])
    if "stop" in ctx:
        ctx["stop"].set()
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    claimed: dict[str, asyncio.Task[Any]] = ctx.pop("claimed", {})
    services: Services | None = ctx.pop("services", None)
    if services is not None:
        if "leases" in ctx:
            await hand_back(ctx["leases"], claimed, ctx.get("unfinished", set()))
        with contextlib.suppress(RedisError, OSError):
            await services.store.redis.hdel(services.store.prefix + WORKER_INFO_KEY, str(ctx.get("worker_id")))  # type: ignore[misc]
        await services.close()


async def hand_back(leases: Leases, claimed: dict[str, asyncio.Task[Any]], unfinished: set[str]) -> list[str]:
    """Once the jobs this worker took are over, mark live for the reaper the runs that did not get to
    their end: those whose job arq's close cancelled before it started (or before it called the run's
    code), and those whose code was cancelled (`unfinished`, kept by `jobs.run_routine`), perhaps before
    it took the lease. The reaper resumes on another worker each that is not over and whose lease nobody
    holds; without this, such a run stays queued while its job's in-progress mark lasts (the job's
    timeout), or for good when arq fails the job as a second try. Returns the runs handed back."""
    await asyncio.gather(*claimed.values(), return_exceptions=True)
    stopped = {queue.run_of_job(job_id) for job_id, task in claimed.items() if task.cancelled()}
    runs = sorted({run_id for run_id in stopped | unfinished if run_id is not None})
    try:
        await leases.hand_back(runs)
    except (RedisError, OSError) as exc:
        log.error(
            "could not hand back runs %s for the reaper: Redis failed (%s); those that do not finish may stay "
            "queued: cancel them and fire their routines again",
            ", ".join(runs),
            exc,
        )
    return runs


async def stop_worker(worker: Worker, polling: asyncio.Task[None]) -> None:
    """Stop `worker`, whose `main()` is the task `polling`: the polling first, then `close_worker`. A run
    cancelled by the close goes back to the queue for another worker to resume; a worker still polling
    would take it again at once, as a second try of a job allowed one, and fail it. What ended the
    polling other than this stop is logged."""
    polling.cancel()
    (ended,) = await asyncio.gather(polling, return_exceptions=True)
    if isinstance(ended, Exception):
        log.error("the worker had stopped taking jobs: %s: %s", type(ended).__name__, ended)
    await close_worker(worker)


async def close_worker(worker: Worker) -> None:
    """Stop `worker`: arq's close (cancel the jobs, wait for them, on_shutdown), then our shutdown again.

    arq's close gathers the jobs it cancelled before it calls on_shutdown; a job cancelled before it
    started, or while it writes its result (arq shields that write), ends cancelled, the gather raises
    CancelledError, and on_shutdown is skipped. That error is the job's, not ours, so it is not passed
    on; our shutdown waits for the other jobs before it hands back their runs."""
    try:
        await worker.close()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.info("a job was stopped before it started or while it wrote its result; the worker's shutdown runs now")
    finally:
        await shutdown(worker.ctx)


async def _recover_deliveries(services: Services) -> object:
    """GitHub never redelivers on its own: ask it again for deliveries that never got a 2xx from us."""
    if services.github is None:
        return 0
    report = await sweep(GitHubApp(services.github), services.store.redis, SweepPolicy(), time.time())
    return len(report.requested)
