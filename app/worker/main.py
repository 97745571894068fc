"""The arq worker: runs jobs and periodic tasks (the schedule tick), owns its resources from startup to shutdown.

Schedules fire exactly once however many workers run: every worker ticks, reads the shared last-tick
time from Redis, asks the scheduler for the slots due in (last, now], and enqueues one `fire_slot` job
per slot with the job id `<routine>:<slot_ms>`. arq refuses a job id that is queued, running or has a
kept result, atomically, so a slot seen by several workers is enqueued once; the kept result
(`SLOT_KEEP_S`) outlives any window that can cover the slot again, because the last-tick time only
moves forward. The run ids travel in the job, so a retried `fire_slot` never creates a second run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from arq import Worker
from arq.connections import ArqRedis
from arq.worker import func

from app.core.config import Settings
from app.core.domain import Event, Routine, RunState, Trigger, new_run_id
from app.core.errors import RoutineNotFound, RoutinesError
from app.run.runner import execute
from app.services import Services, build
from app.store import queue
from app.store.admission import Lifecycle
from app.store.leases import Leases, new_worker_id, reap
from app.triggers.deliveries import DELIVERY_JOB, handle_delivery
from app.triggers.dispatch import fire, release, restart_stalled_groups
from app.triggers.recovery import recovery_sweep
from app.triggers.schedules import Scheduler, Slot

log = logging.getLogger(__name__)

FIRE_SLOT_JOB = "fire_slot"
DEFAULT_TICK_S = 5.0
SLOT_KEEP_S = 7 * 86400
# Moves the shared last-tick time forward only, so no window ever reaches back over a fired slot.
_ADVANCE = "local c = tonumber(redis.call('GET', KEYS[1]) or '0') if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end"  # noqa: E501


@dataclass(frozen=True)
class Periodic:
    """A task every worker runs every `every_s` seconds; it must be safe when several workers run it at once."""

    name: str
    every_s: float
    run: Callable[[Services], Awaitable[object]]


class ScheduleTicker:
    """One worker's schedule tick. `clock` gives epoch seconds (injectable for tests); `ticks` counts ticks."""

    def __init__(self, clock: Callable[[], float] = time.time, max_runs_per_day: int | None = None) -> None:
        self.clock = clock
        self.max_runs_per_day = max_runs_per_day
        self.scheduler = Scheduler()
        self.ticks = 0

    async def tick(self, services: Services) -> list[Slot]:
        """Enqueue the slots due since the last tick of any worker; the first tick ever only sets the time."""
        now = self.clock()
        key = services.store.prefix + "scheduler:last"
        last = await services.store.redis.get(key)
        slots: list[Slot] = []
        if last is not None:
            paused = await Lifecycle(services.store.redis, services.store.prefix).states()
            await services.refresh_routines()
            routines = {n: r for n, r in services.catalog.all().items() if r.on.schedule and n not in paused}
            slots = self.scheduler.due(routines.values(), float(last), now)
            for slot in slots:
                await enqueue_slot(services.pool, routines[slot.routine], slot)
        await services.store.redis.eval(_ADVANCE, 1, key, repr(now))  # type: ignore[misc]
        self.ticks += 1
        return slots


async def enqueue_slot(pool: ArqRedis, routine: Routine, slot: Slot) -> bool:
    """Enqueue the slot's fire job once (False: another worker did). A routine on `*` has no repo to run on."""
    if "*" in routine.repos:
        log.warning("routine %s: a schedule needs repo: owner/name or a list, not '*'; slot skipped", routine.name)
        return False
    runs = [[repo, new_run_id()] for repo in routine.repos]
    job = await pool.enqueue_job(
        FIRE_SLOT_JOB, routine.name, slot.ms, slot.cron, slot.timezone, runs, _job_id=slot.job_id
    )
    return job is not None


async def fire_slot(
    ctx: dict[str, Any], name: str, slot_ms: int, cron: str, timezone: str, runs: list[list[str]]
) -> list[str]:
    """The job of one schedule slot: fire the routine once per repository, with the run ids chosen at the tick."""
    services: Services = ctx["services"]
    await services.refresh_routines()
    try:
        routine = services.catalog.get(name)
    except RoutineNotFound:
        log.warning("schedule slot %s:%s: routine %s is gone; nothing fired", name, slot_ms, name)
        return []
    slot = datetime.fromtimestamp(slot_ms / 1000, UTC).isoformat()
    trigger = Trigger(
        "schedule", actor="schedule", data={"slot": slot, "slot_ms": slot_ms, "cron": cron, "timezone": timezone}
    )
    fired = []
    for repo, run_id in runs:
        run = await fire(
            services.store,
            services.pool,
            routine,
            trigger,
            repo,
            run_id=run_id,
            max_runs_per_day=ctx["max_runs_per_day"],
        )
        fired.append(run.id)
    return fired


async def run_routine(ctx: dict[str, Any], run_id: str) -> str:
    """The job boundary: whatever happens, the run ends in a terminal state with a reason, and its
    concurrency group passes to the next waiting run."""
    services: Services = ctx["services"]
    leases: Leases = ctx["leases"]
    await services.refresh_routines()
    async with leases.held(run_id, ctx["worker_id"]) as held:
        if not held:
            log.info("run %s is held by another worker; this job (%s) does nothing", run_id, ctx.get("job_id"))
            return "held elsewhere"
        try:
            return await _execute(services, run_id)
        finally:
            try:
                await release(services.store, services.pool, run_id)
            except RoutinesError:
                log.exception("could not release the concurrency group of run %s", run_id)


async def _execute(services: Services, run_id: str) -> str:
    try:
        run = await execute(run_id, await services.runner_deps())
        return run.state.value
    except Exception as exc:
        log.exception("run %s crashed", run_id)
        message = str(exc) if isinstance(exc, RoutinesError) else f"internal error: {type(exc).__name__}: {exc}"
        try:
            await services.store.append_event(run_id, Event("run.error", {"error": message}))
            run = await services.store.get_run(run_id)
            if not run.state.terminal:
                await services.store.transition(run_id, RunState.FAILED, error=message)
        except RoutinesError:
            log.exception("could not record the failure of run %s", run_id)
        return RunState.FAILED.value


async def _repeat(task: Periodic, services: Services, stop: asyncio.Event) -> None:
    # Ends on `stop`, not only on cancellation: redis-py can turn a cancellation into a ConnectionError.
    while not stop.is_set():
        try:
            await task.run(services)
        except Exception:
            log.exception("periodic task %s failed; it runs again in %g s", task.name, task.every_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), task.every_s)


def create_worker(
    settings: Settings,
    *,
    handle_signals: bool = True,
    burst: bool = False,
    clock: Callable[[], float] = time.time,
    tick_s: float | None = None,
    periodic: Sequence[Periodic] = (),
) -> Worker:
    """An arq Worker whose startup builds the Services and starts the periodic tasks — the schedule tick
    every `tick_s` (default: settings.schedule_tick_s), then `periodic` — and whose shutdown stops them
    and closes the Services."""
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

    tasks = [
        Periodic("schedule", every_s, ticker.tick),
        sweep,
        Periodic("reaper", settings.reaper_s, reaper),
        *periodic,
    ]

    async def startup(ctx: dict[str, Any]) -> None:
        services = ctx["services"] = await build(settings)
        ctx["ticker"], ctx["max_runs_per_day"] = ticker, ticker.max_runs_per_day
        ctx["worker_id"], ctx["leases"] = (
            worker_id,
            Leases(services.store.redis, services.store.prefix, settings.lease_s),
        )
        ctx["stop"] = stop = asyncio.Event()
        ctx["periodic"] = [asyncio.create_task(_repeat(t, services, stop), name=f"periodic:{t.name}") for t in tasks]

    async def shutdown(ctx: dict[str, Any]) -> None:
        running: list[asyncio.Task[None]] = ctx.pop("periodic", [])
        if "stop" in ctx:
            ctx["stop"].set()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        services: Services | None = ctx.get("services")
        if services is not None:
            await services.close()

    return Worker(
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


async def _recover_deliveries(services: Services) -> object:
    """GitHub never redelivers on its own: ask it again for deliveries that never got a 2xx from us."""
    return await recovery_sweep({"services": services})
