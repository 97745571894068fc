"""Which schedule slots are due in a window (t0, t1]: pure, no I/O.

Crons are read by croniter in the schedule's IANA time zone, so `0 2 * * *` in Europe/Berlin is 02:00
Berlin time all year. Across DST: a time skipped in spring fires at the first instant after the gap
(02:00 → 03:00); a fixed time that occurs twice in autumn fires once (the first occurrence). `H`
fields are hashed with the routine's name, as the validator does (`app.routines.triggers.check_cron`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter
from croniter.croniter import HashExpander

from app.core.domain import Routine, Schedule
from app.routines.triggers import hashed

_AFTER_S = 0.001  # croniter's get_prev is strictly before its start; step past t1 to include it
_WALK = 32  # fires stepped through after downtime before jumping to the window's end
_DAY_S = 86400
_STEP = re.compile(r"(\d+)-(\d+)/(\d+)")

_Values = frozenset[int] | None  # the minutes (or hours) a schedule can fire at; None: any
_Key = tuple[str, int]  # (routine, index of the schedule in its `on.schedule`)
_Filing = tuple[str, _Values, _Values]  # (zone, minutes, hours)


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


def _hashed(schedule: Schedule) -> bool:
    return hashed(schedule.cron)


def _cron(schedule: Schedule, name: str, start: float) -> croniter:
    hash_id = name if _hashed(schedule) else None  # croniter hashes `@daily` too when given an id
    return croniter(schedule.cron, _local(start, schedule.timezone), hash_id=hash_id)


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
    """The last fire of `schedule` at or before `until` (epoch seconds) for the routine `name`."""
    it = _cron(schedule, name, until + _AFTER_S)
    while True:
        at: float = it.get_prev(float)
        if not _repeated(schedule, at):
            return at


def latest_fire(schedule: Schedule, name: str, t0: float, t1: float) -> float | None:
    """The last fire of `schedule` in (t0, t1] for the routine `name`, or None: stepped forward from t0,
    and after a long downtime read back from t1."""
    it, latest, walked = _cron(schedule, name, t0), None, 0
    while walked < _WALK:
        at: float = it.get_next(float)
        if _repeated(schedule, at):
            continue
        if at > t1:
            return latest
        latest, walked = at, walked + 1
    return last_fire(schedule, name, t1)


def due(routines: Iterable[Routine], t0: float, t1: float) -> list[Slot]:
    """For each routine, its latest slot in (t0, t1] over all its schedules — at most one per routine,
    so after downtime the latest missed slot fires once and earlier ones never do.

    The reference answer: croniter for every schedule. `Scheduler.due` gives the same, faster."""
    if t1 <= t0:
        return []
    slots = []
    for routine in routines:
        fires = [(latest_fire(s, routine.name, t0, t1), s) for s in routine.on.schedule]
        if (slot := _best(routine.name, [(at, s) for at, s in fires if at is not None])) is not None:
            slots.append(slot)
    return slots


def _best(name: str, fires: list[tuple[float, Schedule]]) -> Slot | None:
    """The latest of a routine's fires (the first schedule's on a tie)."""
    best: Slot | None = None
    for at, schedule in fires:
        if best is None or at > best.at:
            best = Slot(name, at, schedule.cron, schedule.timezone)
    return best


class Scheduler:
    """`due` over successive windows, asking croniter only about the schedules that can fire in the window.

    A routine is filed when first seen or changed: each schedule, per time zone, under the minutes of the
    hour it can fire at, with the hours it can fire at (croniter's expansion of the cron, read once per
    cron text; `H` fields through croniter's own hash, per routine). No fire is computed then. A window
    looks up the wall-clock minutes its zones show in it — or skip, across a DST change — and croniter
    computes the fires of just the schedules filed there, once per cron, zone and hash. Day and month
    fields are not filed: croniter decides those. So a first tick costs a filing per routine and a later
    one a comparison per routine to see what changed. Routines that disappear are forgotten at the next call.

    Windows need not follow each other (several workers share the ticks); each is answered on its own.
    Pure: the caller owns the clock and the windows.
    """

    def __init__(self) -> None:
        self._plans: dict[str, _Plan] = {}
        self._zones: dict[str, list[dict[_Key, _Values]]] = {}  # zone -> minute of the hour -> key -> hours
        self._filed: dict[str, int] = {}  # zone -> schedules filed in it
        self._always: set[_Key] = set()  # schedules the filing cannot describe (seconds, years)
        self._fields = _Fields()
        self._calls = 0

    def __len__(self) -> int:
        """How many routines it holds schedules of."""
        return len(self._plans)

    def due(self, routines: Iterable[Routine], t0: float, t1: float) -> list[Slot]:
        """The same as `due(routines, t0, t1)`; `routines` stay filed for the next call."""
        self._sync(routines)
        if t1 <= t0:
            return []
        indexes: dict[str, list[int]] = {}
        for name, index in self._candidates(t0, t1):
            indexes.setdefault(name, []).append(index)
        known: dict[tuple[str, str, str], float | None] = {}
        slots = []
        for name, found in indexes.items():
            fires = []
            for index in sorted(found):
                schedule = self._plans[name].schedules[index]
                key = (schedule.cron, schedule.timezone, name if _hashed(schedule) else "")
                if key not in known:
                    known[key] = latest_fire(schedule, name, t0, t1)
                if (at := known[key]) is not None:
                    fires.append((at, schedule))
            if (slot := _best(name, fires)) is not None:
                slots.append(slot)
        return sorted(slots, key=lambda slot: self._plans[slot.routine].pos)

    def _sync(self, routines: Iterable[Routine]) -> None:
        """Files new and changed routines, and forgets those that are gone."""
        self._calls += 1
        seen = 0
        for pos, routine in enumerate(routines):
            plan = self._plans.get(routine.name)
            schedules = routine.on.schedule
            if plan is None or (plan.schedules is not schedules and plan.schedules != schedules):
                filings = [self._fields.filing(s, routine.name) for s in schedules]  # may raise: nothing changed yet
                if plan is not None:
                    self._unfile(routine.name, plan)
                plan = self._plans[routine.name] = _Plan(schedules)
                self._file(routine.name, filings)
            if plan.seen != self._calls:
                seen += 1
            plan.pos, plan.seen = pos, self._calls
        if seen < len(self._plans):
            for name in [n for n, plan in self._plans.items() if plan.seen != self._calls]:
                self._unfile(name, self._plans.pop(name))

    def _file(self, name: str, filings: list[_Filing | None]) -> None:
        for index, filing in enumerate(filings):
            if filing is None:
                self._always.add((name, index))
                continue
            zone, minutes, hours = filing
            if zone not in self._zones:
                self._zones[zone] = [{} for _ in range(60)]
            buckets = self._zones[zone]
            for minute in range(60) if minutes is None else minutes:
                buckets[minute][name, index] = hours
            self._filed[zone] = self._filed.get(zone, 0) + 1

    def _unfile(self, name: str, plan: _Plan) -> None:
        for index, schedule in enumerate(plan.schedules):
            if (name, index) in self._always:
                self._always.discard((name, index))
                continue
            zone = schedule.timezone
            for bucket in self._zones[zone]:
                bucket.pop((name, index), None)
            self._filed[zone] -= 1
            if not self._filed[zone]:
                del self._zones[zone], self._filed[zone]

    def _candidates(self, t0: float, t1: float) -> set[_Key]:
        """The schedules whose minute and hour the wall clock of their zone shows or skips in (t0, t1]."""
        found = set(self._always)
        for zone, buckets in self._zones.items():
            walls = _wall_minutes(ZoneInfo(zone), t0, t1)
            for minute, hours in walls.items() if walls is not None else ((m, None) for m in range(60)):
                for key, can in buckets[minute].items():
                    if hours is None or can is None or not can.isdisjoint(hours):
                        found.add(key)
        return found


class _Plan:
    """A routine's schedules as last filed, and where the last `due` call met it in its iterable."""

    __slots__ = ("pos", "schedules", "seen")

    def __init__(self, schedules: tuple[Schedule, ...]) -> None:
        self.schedules = schedules
        self.pos = self.seen = 0


@dataclass(frozen=True)
class _Hash:
    """A hashed minute or hour field (`H`, `H/15`, `H(0-29)/10`), to expand per routine."""

    cron: str  # the two fields as a cron, lowercased as croniter hands it to its expanders
    index: int
    term: str
    match: re.Match[str]


_Field = _Values | _Hash  # a minute or hour field as read from a cron: its values, or hashed per routine


class _Fields:
    """The minutes and hours a schedule can fire at, as croniter expands its cron: read once per minute and
    hour text, and for `H` fields once per routine, through the expander croniter itself runs on them."""

    def __init__(self) -> None:
        self._crons: dict[str, tuple[_Field, _Field] | None] = {}
        self._pairs: dict[tuple[str, str], tuple[_Field, _Field]] = {}  # (minute, hour) text -> fields
        self._terms: dict[str, _Values] = {}  # an expanded hashed term ("7-59/15") -> its values
        self._hash = HashExpander(croniter)

    def filing(self, schedule: Schedule, name: str) -> _Filing | None:
        """(zone, minutes, hours) that hold every fire of `schedule` for the routine `name` — more is
        harmless, croniter decides; None for a cron with seconds or years."""
        cron = schedule.cron
        if cron not in self._crons:
            self._crons[cron] = self._read(cron)
        if (fields := self._crons[cron]) is None:
            return None
        minute, hour = fields
        return schedule.timezone, self._values(minute, name), self._values(hour, name)

    def _read(self, cron: str) -> tuple[_Field, _Field] | None:
        if cron.startswith("@"):
            expanded = croniter.expand(cron)[0]
            return _listed(expanded[0]), _listed(expanded[1])
        terms = cron.split()
        if len(terms) != 5:
            return None
        pair = (terms[0], terms[1])
        if pair not in self._pairs:
            self._pairs[pair] = self._expand(*pair)
        return self._pairs[pair]

    def _expand(self, minute: str, hour: str) -> tuple[_Field, _Field]:
        if minute.isdigit() and hour.isdigit() and int(minute) < 60 and int(hour) < 24:
            return frozenset((int(minute),)), frozenset((int(hour),))  # the usual case, without croniter
        # The other fields do not change how croniter reads these two.
        reduced = f"{minute} {hour} * * *"
        expanded = croniter.expand(reduced, hash_id=b"" if hashed(reduced) else None)[0]
        fields: list[_Field] = []
        for index, term in enumerate(reduced.lower().split()[:2]):
            if term.startswith("r"):  # random: croniter draws anew for each iterator
                fields.append(None)
            elif term.startswith("h") and (match := self._hash.match(reduced.lower(), index, term)):
                fields.append(_Hash(reduced.lower(), index, term, match))
            else:
                fields.append(_listed(expanded[index]))
        return fields[0], fields[1]

    def _values(self, field: _Field, name: str) -> _Values:
        if not isinstance(field, _Hash):
            return field
        term = str(self._hash.expand(field.cron, field.index, field.term, hash_id=name.encode(), match=field.match))
        if term not in self._terms:
            self._terms[term] = _term_values(term)
        return self._terms[term]


def _listed(values: list[int | str]) -> _Values:
    return None if "*" in values else frozenset(int(v) for v in values)


def _term_values(term: str) -> _Values:
    """The values of an expanded hashed term: `37` or `7-59/15`; None (any) for a form not known here."""
    if term.isdigit():
        return frozenset((int(term),))
    step = _STEP.fullmatch(term)
    if step is None:
        return None
    first, last, every = (int(g) for g in step.groups())
    return frozenset(range(first, last + 1, every)) if every and first < last else None


def _offset_s(zone: ZoneInfo, at: float) -> float:
    offset = datetime.fromtimestamp(at, zone).utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


def _wall_minutes(zone: ZoneInfo, t0: float, t1: float) -> dict[int, set[int]] | None:
    """Minute of the hour → hours, of the whole minutes the wall clock of `zone` shows in (t0, t1] or skips
    (a spring-forward gap); None when that is every minute of the day."""
    if t1 - t0 >= _DAY_S:
        return None
    offsets = [_offset_s(zone, at) for at in (t0, *range(math.ceil(t0) + 3600, math.ceil(t1), 3600), t1)]
    # From the earliest reading to the latest: this takes in the wall times a spring change skips (croniter
    # fires them at the gap's end) and both readings of the hour an autumn change repeats.
    first, last = math.ceil((t0 + min(offsets)) / 60), math.floor((t1 + max(offsets)) / 60)
    if last - first >= _DAY_S // 60:
        return None
    walls: dict[int, set[int]] = {}
    for minute in range(first, last + 1):
        walls.setdefault(minute % 60, set()).add(minute // 60 % 24)
    return walls
