"""The scheduler: due slots per window, in the schedule's time zone, across DST, one per routine."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import pairwise, takewhile
from zoneinfo import ZoneInfo

from croniter import croniter

from app.core.domain import Routine, Schedule, Triggers
from app.triggers.schedules import Scheduler, Slot, due, last_fire, next_fire

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
    assert scheduler.due([], start + 90, start + 86400) == [] and len(scheduler) == 0


def ticking(changes: dict[float, list[Routine]], start: float, end: float, step_s: float) -> list[Slot]:
    """Tick like a worker whose routines become `changes[t]` from the window that starts at t."""
    scheduler, slots, t, routines = Scheduler(), [], start, changes[start]
    while t < end:
        routines = changes.get(t, routines)
        slots += scheduler.due(routines, t, t + step_s)
        t += step_s
    return slots


def test_a_cron_changed_between_ticks_fires_on_the_new_cron_and_never_on_the_old() -> None:
    start = at(2025, 1, 15, 0, 0)
    before, after = routine("r", ("0 3 * * *", "Europe/Berlin")), routine("r", ("30 1 * * *", "Europe/Berlin"))
    slots = ticking({start: [before], start + 3600: [after]}, start, start + 2 * 86400, 5)
    assert [local(s) for s in slots] == ["2025-01-15 01:30 CET", "2025-01-16 01:30 CET"]


def test_a_routine_added_after_the_first_tick_fires_from_its_next_slot() -> None:
    start = at(2025, 1, 15, 0, 0)
    hourly, late = routine("hourly", ("0 * * * *", "UTC")), routine("late", ("H * * * *", "Asia/Kolkata"))
    end = start + 4 * 3600
    slots = ticking({start: [hourly], start + 5400: [hourly, late]}, start, end, 5)
    it = croniter("H * * * *", datetime.fromtimestamp(start + 5400, ZoneInfo("Asia/Kolkata")), hash_id="late")
    expected = list(takewhile(lambda t: t <= end, (it.get_next(float) for _ in range(9))))
    assert [s.at for s in slots if s.routine == "late"] == expected and len(expected) >= 2
    assert [s.at - start for s in slots if s.routine == "hourly"] == [3600.0, 7200.0, 10800.0, 14400.0]


def test_a_removed_routine_stops_firing_and_coming_back_does_not_replay_its_missed_slots() -> None:
    start = at(2025, 1, 15, 0, 30, tz=ZoneInfo("UTC"))
    hourly, other = routine("hourly", ("0 * * * *", "UTC")), routine("other", ("0 9 * * *", "UTC"))
    slots = ticking(
        {start: [hourly, other], start + 3600: [other], start + 4 * 3600: [hourly, other]}, start, start + 6 * 3600, 5
    )
    assert [local(s) for s in slots] == ["2025-01-15 01:00 UTC", "2025-01-15 05:00 UTC", "2025-01-15 06:00 UTC"]


def test_hashed_fields_of_every_form_fire_when_croniter_says() -> None:
    crons = ("H/15 * * * *", "H(0-29)/10 H/6 * * *", "H H/4 * * *", "H(10-20) H(1-3) * * *")
    zone, start = "America/New_York", at(2025, 6, 2, 0, 0)
    routines = [routine(f"team-{n}/{i}", (cron, zone)) for n in range(8) for i, cron in enumerate(crons)]
    slots = sweep(routines, start, start + 86400, 300)
    for r in routines:
        it = croniter(r.on.schedule[0].cron, datetime.fromtimestamp(start, ZoneInfo(zone)), hash_id=r.name)
        expected = list(takewhile(lambda t: t <= start + 86400, (it.get_next(float) for _ in range(200))))
        assert [s.at for s in slots if s.routine == r.name] == expected, r.name


def test_a_scheduler_agrees_with_croniter_for_every_schedule_across_dst_changes() -> None:
    crons = ("30 2 * * *", "0 3 * * *", "H * * * *", "*/7 * * * *", "15 */2 * * *", "@daily", "0 9 * * 1-5")
    zones = ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago")
    routines = [routine(f"{zone}-{cron}", (cron, zone)) for zone in zones for cron in crons]
    changes = [(2025, 3, 30, 1), (2025, 4, 6, 2), (2025, 9, 7, 4), (2025, 10, 26, 1), (2025, 11, 2, 6)]
    compared = 0
    for year, month, day, hour in changes:
        scheduler, t = Scheduler(), at(year, month, day, hour, 0, tz=ZoneInfo("UTC")) - 3 * 3600
        for width in (5, 55, 600, 3599, 5, 7300, 5, 90000):
            expected = due(routines, t, t + width)
            assert scheduler.due(routines, t, t + width) == expected, (t, width)
            t, compared = t + width, compared + len(expected)
    assert compared > 100


# Every DST change of 2025 in zones that move by an hour at 01:00, 02:00 or midnight, and by half an hour.
CHANGES = {
    "Europe/Berlin": ("2025-03-30T01:00", "2025-10-26T01:00"),
    "America/New_York": ("2025-03-09T07:00", "2025-11-02T06:00"),
    "Australia/Lord_Howe": ("2025-04-05T15:00", "2025-10-04T15:30"),
    "America/Santiago": ("2025-04-06T03:00", "2025-09-07T04:00"),
}
NEAR_CHANGES = (
    "30 2 * * *", "15 2 * * *", "* 2 * * *", "30 1 * * *", "45 1 * * *", "0 0 * * *", "30 23 * * *", "@daily",
    "*/7 * * * *", "H * * * *", "15 */2 * * *", "H(0-29)/10 H/6 * * *",
)  # fmt: skip


def test_windows_at_across_and_after_every_dst_change_agree_with_croniter_for_every_schedule() -> None:
    """Windows that end at, start at and straddle each change, then two minutes at a time through the time it
    skips or repeats: a skipped time fires at the gap's end, a repeated one as croniter says."""
    compared = 0
    for zone, changes in CHANGES.items():
        routines = [routine(f"{zone}/{cron}", (cron, zone)) for cron in NEAR_CHANGES]
        for change in (datetime.fromisoformat(c + "+00:00").timestamp() for c in changes):
            assert _offset(zone, change - 1) != _offset(zone, change), (zone, change)
            scheduler, t = Scheduler(), change + 2
            windows = [(change - 5, change), (change, change + 5), (change - 3, t)]
            while t < change + 3600:
                windows.append((t, t + 121))
                t += 121
            for t0, t1 in windows:
                expected = due(routines, t0, t1)
                assert scheduler.due(routines, t0, t1) == expected, (zone, t0, t1)
                compared += len(expected)
    assert compared > 100


def _offset(zone: str, at: float) -> timedelta | None:
    return datetime.fromtimestamp(at, ZoneInfo(zone)).utcoffset()


def test_a_routine_moved_to_another_zone_or_given_another_schedule_fires_only_where_it_is_now() -> None:
    start = at(2025, 1, 15, 0, 0, tz=ZoneInfo("UTC"))
    utc = routine("r", ("0 9 * * *", "UTC"))
    tokyo = routine("r", ("0 9 * * *", "Asia/Tokyo"))
    both = routine("r", ("0 9 * * *", "Asia/Tokyo"), ("30 12 * * *", "UTC"))
    slots = ticking({start: [utc], start + 3600: [tokyo], start + 86400: [both]}, start, start + 2 * 86400, 30)
    assert [local(s) for s in slots] == ["2025-01-16 09:00 JST", "2025-01-16 12:30 UTC", "2025-01-17 09:00 JST"]


def test_a_cron_with_seconds_fires_like_croniter_reads_it() -> None:
    start = at(2025, 1, 15, 0, 0, tz=ZoneInfo("UTC"))
    seconds = routine("s", ("0 * * * * 30", "UTC"))  # croniter's sixth field: seconds
    slots = sweep([seconds], start, start + 3 * 3600, 60)
    assert [s.at - start for s in slots] == [30.0, 3630.0, 7230.0]


def test_next_and_last_fire_hash_only_crons_with_h_as_the_scheduler_fires_them() -> None:
    midnight = at(2025, 1, 16, 0, 0, tz=ZoneInfo("UTC"))
    daily = Schedule("@daily", "UTC")
    assert next_fire(daily, "nightly", midnight - 3600) == midnight == last_fire(daily, "nightly", midnight + 3600)
    hashed = Schedule("H 3 * * *", "UTC")
    expected = croniter("H 3 * * *", datetime.fromtimestamp(midnight, ZoneInfo("UTC")), hash_id="nightly")
    assert next_fire(hashed, "nightly", midnight) == expected.get_next(float)


def test_a_lowercase_h_is_hashed_like_an_uppercase_one_as_the_validator_accepts_it() -> None:
    start = at(2025, 1, 16, 0, 0, tz=ZoneInfo("UTC"))
    upper = sweep([routine("nightly", ("H 3 * * *", "UTC"))], start, start + 86400, 5)
    lower = sweep([routine("nightly", ("h 3 * * *", "UTC"))], start, start + 86400, 5)
    assert [s.at for s in lower] == [s.at for s in upper] and len(upper) == 1
    assert next_fire(Schedule("h 3 * * *", "UTC"), "nightly", start) == upper[0].at
