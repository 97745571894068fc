"""The scheduler: due slots per window, in the schedule's time zone, across DST, one per routine."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise
from zoneinfo import ZoneInfo

from croniter import croniter

from app.core.domain import Routine, Schedule, Triggers
from app.triggers.schedules import Scheduler, Slot, due

BERLIN = ZoneInfo("Europe/Berlin")


def routine(name: str, *schedules: tuple[str, str]) -> Routine:
    on = Triggers(schedule=tuple(Schedule(cron, tz) for cron, tz in schedules))
    return Routine(name=name, repo="acme/api", prompt="p", on=on)


def at(year: int, month: int, day: int, hour: int, minute: int, tz: ZoneInfo = BERLIN) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=tz).timestamp()


def local(slot: Slot) -> str:
    return datetime.fromtimestamp(slot.at, ZoneInfo(slot.timezone)).strftime("%Y-%m-%d %H:%M %Z")


def sweep(routines: list[Routine], start: float, end: float, step_s: float) -> list[Slot]:
    """Tick like a worker: consecutive windows of `step_s` from `start` to `end`."""
    scheduler, slots, t = Scheduler(), [], start
    while t < end:
        slots += scheduler.due(routines, t, min(t + step_s, end))
        t += step_s
    return slots


def test_a_slot_is_due_in_the_window_that_contains_it_and_named_by_routine_and_ms() -> None:
    nightly = routine("nightly", ("0 2 * * *", "Europe/Berlin"))
    two = at(2025, 1, 15, 2, 0)
    assert due([nightly], two - 5, two) == [Slot("nightly", two, "0 2 * * *", "Europe/Berlin")]
    assert due([nightly], two, two + 5) == []  # (t0, t1]: the slot belongs to exactly one window
    assert due([nightly], two - 10, two - 5) == []
    assert due([nightly], two - 5, two)[0].job_id == f"nightly:{int(two * 1000)}"


def test_the_time_zone_decides_the_instant() -> None:
    berlin = routine("b", ("0 2 * * *", "Europe/Berlin"))
    york = routine("y", ("0 2 * * *", "America/New_York"))
    day = sweep([berlin, york], at(2025, 1, 15, 0, 0), at(2025, 1, 16, 0, 0), 300)
    assert [local(s) for s in day] == ["2025-01-15 02:00 CET", "2025-01-15 02:00 EST"]


def test_dst_days_fire_once_each_at_the_wall_clock_time() -> None:
    nightly = routine("nightly", ("30 2 * * *", "Europe/Berlin"))
    spring = sweep([nightly], at(2025, 3, 29, 12, 0), at(2025, 4, 1, 0, 0), 60)
    assert [local(s) for s in spring] == ["2025-03-30 03:00 CEST", "2025-03-31 02:30 CEST"]  # 02:30 did not exist
    autumn = sweep([nightly], at(2025, 10, 25, 12, 0), at(2025, 10, 28, 0, 0), 60)
    assert [local(s) for s in autumn] == ["2025-10-26 02:30 CEST", "2025-10-27 02:30 CET"]  # 02:30 happened twice


def test_an_hourly_schedule_keeps_firing_every_real_hour_through_the_autumn_change() -> None:
    hourly = routine("hourly", ("0 * * * *", "Europe/Berlin"))
    slots = sweep([hourly], at(2025, 10, 26, 0, 30), at(2025, 10, 26, 4, 30), 60)
    assert [b.at - a.at for a, b in pairwise(slots)] == [3600.0] * 4


def test_after_downtime_only_the_latest_missed_slot_is_due() -> None:
    hourly = routine("hourly", ("0 * * * *", "UTC"))
    slots = due([hourly], at(2025, 1, 1, 0, 30, tz=ZoneInfo("UTC")), at(2025, 1, 1, 7, 10, tz=ZoneInfo("UTC")))
    assert [local(s) for s in slots] == ["2025-01-01 07:00 UTC"]


def test_several_schedules_of_one_routine_give_its_latest_slot_only() -> None:
    both = routine("both", ("0 6 * * *", "UTC"), ("0 7 * * *", "UTC"))
    slots = due([both], at(2025, 1, 1, 5, 0, tz=ZoneInfo("UTC")), at(2025, 1, 1, 8, 0, tz=ZoneInfo("UTC")))
    assert [local(s) for s in slots] == ["2025-01-01 07:00 UTC"]


def test_hashed_fields_spread_routines_like_the_validator_hashes_them() -> None:
    start = at(2025, 1, 1, 0, 0)
    names = [f"r{i}" for i in range(20)]
    slots = sweep([routine(n, ("H 3 * * *", "Europe/Berlin")) for n in names], start, start + 86400, 60)
    minutes = {s.routine: datetime.fromtimestamp(s.at, BERLIN).minute for s in slots}
    assert sorted(minutes) == sorted(names) and len(set(minutes.values())) > 5
    expected = croniter("H 3 * * *", datetime(2025, 1, 1, tzinfo=BERLIN), hash_id="r7").get_next(datetime)
    assert minutes["r7"] == expected.minute


def test_a_cached_scheduler_agrees_with_a_fresh_one_over_irregular_windows() -> None:
    routines = [routine("a", ("15 */2 * * *", "Asia/Kolkata")), routine("b", ("0 9 * * 1-5", "America/Denver"))]
    cached, t, end = Scheduler(), at(2025, 3, 1, 0, 0), at(2025, 3, 15, 0, 0)
    step = 0
    while t < end:
        width = (37, 600, 3599, 7300)[step % 4]
        assert cached.due(routines, t, t + width) == due(routines, t, t + width)
        t, step = t + width, step + 1


def test_changed_and_removed_routines_are_read_afresh() -> None:
    scheduler = Scheduler()
    start = at(2025, 1, 1, 0, 0)
    assert scheduler.due([routine("r", ("0 3 * * *", "Europe/Berlin"))], start, start + 30) == []
    moved = routine("r", ("1 0 * * *", "Europe/Berlin"))
    assert [local(s) for s in scheduler.due([moved], start + 30, start + 90)] == ["2025-01-01 00:01 CET"]
    assert scheduler.due([], start + 90, start + 86400) == [] and not scheduler._next
