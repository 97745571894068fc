"""What the console's pages show, read from the store: rows of routines and runs, a routine's next fires,
the health of the installation. No HTML here; `pages` renders these."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from app.core.domain import Routine, Run, RunState
from app.services import Services
from app.store.metrics import WORKER_INFO_KEY, WORKERS_KEY
from app.store.quotas import Quotas
from app.store.routine_states import RoutineState, RoutineStates
from app.triggers.schedules import next_fire

WEEK_S = 7 * 86400
FILTERS = ("routine", "state", "repo", "trigger")


@dataclass
class RoutineRow:
    routine: Routine
    state: RoutineState
    runs_today: int
    next_fires: list[tuple[str, str]] = field(default_factory=list)  # (local time, zone)
    last: Run | None = None
    cost_week: float = 0.0

    @property
    def triggers(self) -> list[str]:
        found = ["api"] if self.routine.on.api else []
        found += [f"cron {s.cron} ({s.timezone})" for s in self.routine.on.schedule]
        found += [f"github {event}" for event in sorted(self.routine.on.github)]
        return found


def fires(routine: Routine, now: float, count: int) -> list[tuple[str, str]]:
    """The next `count` fire times of the routine's schedules, earliest first, in each schedule's zone."""
    upcoming: list[tuple[float, str]] = []
    for schedule in routine.on.schedule:
        at = now
        for _ in range(count):
            at = next_fire(schedule, routine.name, at)
            upcoming.append((at, schedule.timezone))
    upcoming.sort()
    return [(datetime.fromtimestamp(at, ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z"), zone) for at, zone in upcoming][
        :count
    ]


async def routine_rows(services: Services, *, now: float | None = None, fires_each: int = 1) -> list[RoutineRow]:
    await services.refresh_routines()
    now = time.time() if now is None else now
    routines = services.catalog.all()
    store = services.store
    states = await RoutineStates(store.redis, store.prefix).all()
    today = await Quotas(store.redis, store.prefix).runs_today(routines)
    rows = []
    for name, routine in sorted(routines.items()):
        recent, _ = await store.page_runs(routine=name, limit=1)
        rows.append(
            RoutineRow(
                routine,
                states.get(name, RoutineState()),
                today.get(name, 0),
                fires(routine, now, fires_each),
                recent[0] if recent else None,
                await cost_since(services, name, now - WEEK_S),
            )
        )
    return rows


async def cost_since(services: Services, routine: str, since: float) -> float:
    """The cost of the routine's runs created since `since` (the newest thousand of them)."""
    return sum(run.cost_usd for run in await services.store.runs_since(routine, since))


@dataclass
class Health:
    redis: str
    workers: list[dict[str, Any]]
    queued_jobs: int
    runs_by_state: dict[str, int]


async def health(services: Services) -> Health:
    store = services.store
    try:
        await store.ping()
        redis = "ok"
    except Exception as exc:  # the page says what is wrong instead of failing
        return Health(f"unreachable: {exc}", [], 0, {})
    seen = await store.redis.zrangebyscore(store.prefix + WORKERS_KEY, time.time() - 60, "+inf", withscores=True)
    ids = [member.decode() for member, _ in seen]
    about = await store.redis.hmget(store.prefix + WORKER_INFO_KEY, ids) if ids else []  # type: ignore[misc]
    workers = [
        {**(json.loads(raw) if raw else {"id": worker_id}), "seen": at}
        for (worker_id, (_, at)), raw in zip(zip(ids, seen, strict=True), about, strict=True)
    ]
    queued = int(await store.redis.zcard("arq:queue"))
    recent, _ = await store.page_runs(limit=500, scan=500)
    counts: dict[str, int] = {}
    for run in recent:
        counts[run.state.value] = counts.get(run.state.value, 0) + 1
    return Health(redis, sorted(workers, key=lambda w: str(w.get("id"))), queued, counts)


def duration(run: Run) -> str:
    end = run.updated_at if run.state.terminal else time.time()
    seconds = max(0.0, end - run.created_at)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def when(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H:%M:%S")


STATES = [state.value for state in RunState]
