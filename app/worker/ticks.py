"""What every worker runs beside its jobs: periodic tasks (the schedule tick, sweeps, the reaper)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.services import Services
from app.store.routine_states import RoutineStates
from app.triggers.schedules import Scheduler, Slot
from app.worker.jobs import enqueue_slot

log = logging.getLogger(__name__)

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
            paused = await RoutineStates(services.store.redis, services.store.prefix).all()
            await services.refresh_routines()
            routines = {n: r for n, r in services.catalog.all().items() if r.on.schedule and n not in paused}
            slots = self.scheduler.due(routines.values(), float(last), now)
            for slot in slots:
                await enqueue_slot(services.pool, routines[slot.routine], slot)
        await services.store.redis.eval(_ADVANCE, 1, key, repr(now))  # type: ignore[misc]
        self.ticks += 1
        return slots


async def repeat(task: Periodic, services: Services, stop: asyncio.Event) -> None:
    # Ends on `stop`, not only on cancellation: redis-py can turn a cancellation into a ConnectionError.
    while not stop.is_set():
        try:
            await task.run(services)
        except Exception:
            log.exception("periodic task %s failed; it runs again in %g s", task.name, task.every_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), task.every_s)


