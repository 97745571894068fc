"""Which schedule slots are due in a window (t0, t1]: pure, no I/O.

Crons are read by croniter in the schedule's IANA time zone, so `0 2 * * *` in Europe/Berlin is 02:00
Berlin time all year. Across DST: a time skipped in spring fires at the first instant after the gap
(02:00 → 03:00); a fixed time that occurs twice in autumn fires once (the first occurrence). `H`
fields are hashed with the routine's name, as the validator does (`app.routines.triggers.check_cron`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from app.core.domain import Routine, Schedule

_AFTER_S = 0.001  # croniter's get_prev is strictly before its start; step past t1 to include it
_WALK = 32  # fires stepped through after downtime before jumping to the window's end


@dataclass(frozen=True)
class Slot:
    """One firing of one routine's schedule at `at` (epoch seconds)."""

    routine: str
    at: float
    cron: str
    timezone: str

    @property
    def ms(self) -> int:
        return round(self.at * 1000)

    @property
    def job_id(self) -> str:
        """The slot's deterministic id: `<routine>:<slot_ms>`; enqueueing it twice is a no-op."""
        return f"{self.routine}:{self.ms}"


def _local(at: float, zone: str) -> datetime:
    return datetime.fromtimestamp(at, ZoneInfo(zone))


def _cron(schedule: Schedule, name: str, start: float) -> croniter:
    return croniter(schedule.cron, _local(start, schedule.timezone), hash_id=name or None)


def _repeated(schedule: Schedule, at: float) -> bool:
    """True for the second occurrence of a wall-clock time (autumn DST) of a cron with a fixed hour."""
    local = _local(at, schedule.timezone)
    if not local.fold or local.replace(fold=0).timestamp() == at:
        return False
    if schedule.cron.startswith("@"):
        return schedule.cron != "@hourly"
    hour = schedule.cron.split()[1]
    return "*" not in hour and "/" not in hour


def next_fire(schedule: Schedule, name: str, after: float) -> float:
    """The first fire of `schedule` strictly after `after` (epoch seconds) for the routine `name`."""
    it = _cron(schedule, name, after)
    while True:
        at: float = it.get_next(float)
        if not _repeated(schedule, at):
            return at


def last_fire(schedule: Schedule, name: str, until: float) -> float:
    """The last fire of `schedule` at or before `until` (epoch seconds)."""
    it = _cron(schedule, name, until + _AFTER_S)
    while True:
        at: float = it.get_prev(float)
        if not _repeated(schedule, at):
            return at


class Scheduler:
    """Due slots over successive windows. Keeps each schedule's next fire, so a tick costs a dict lookup
    and a comparison per schedule; croniter runs only for schedules that fire, changed or are new, and
    once per distinct (cron, time zone) unless the cron has `H` fields (those hash per routine).

    Pure: the caller owns the clock and the windows. Routines that disappear are forgotten at the next call.
    """

    def __init__(self) -> None:
        # (cron, timezone, hash id) -> (from, next, fired): `next` is the first fire strictly after `from`.
        self._next: dict[tuple[str, str, str], tuple[float, float, float | None]] = {}

    def due(self, routines: Iterable[Routine], t0: float, t1: float) -> list[Slot]:
        """For each routine, its latest slot in (t0, t1] over all its schedules — at most one per routine,
        so after downtime the latest missed slot fires once and earlier ones never do."""
        if t1 <= t0:
            return []
        known: dict[tuple[str, str, str], tuple[float, float, float | None]] = {}
        slots: list[Slot] = []
        for routine in routines:
            best: Slot | None = None
            for schedule in routine.on.schedule:
                key = (schedule.cron, schedule.timezone, routine.name if "H" in schedule.cron else "")
                if key not in known:
                    known[key] = _advance(self._next.get(key), schedule, key[2], t0, t1)
                at = known[key][2]
                if at is not None and (best is None or at > best.at):
                    best = Slot(routine.name, at, schedule.cron, schedule.timezone)
            if best is not None:
                slots.append(best)
        self._next = known
        return slots


def _advance(
    entry: tuple[float, float, float | None] | None, schedule: Schedule, hash_id: str, t0: float, t1: float
) -> tuple[float, float, float | None]:
    """The schedule's cache entry after the window (t0, t1], with the latest fire in it (or None)."""
    if entry is None or entry[0] > t0 or entry[1] <= t0:
        entry = (t0, next_fire(schedule, hash_id, t0), None)
    if entry[1] > t1:
        return (entry[0], entry[1], None)
    it, latest = _cron(schedule, hash_id, entry[1]), entry[1]
    for _ in range(_WALK):
        at: float = it.get_next(float)
        if _repeated(schedule, at):
            continue
        if at > t1:
            return (t1, at, latest)
        latest = at
    return (t1, next_fire(schedule, hash_id, t1), last_fire(schedule, hash_id, t1))


def due(routines: Iterable[Routine], t0: float, t1: float) -> list[Slot]:
    """`Scheduler().due` without a cache: for one-off questions and tests."""
    return Scheduler().due(routines, t0, t1)
