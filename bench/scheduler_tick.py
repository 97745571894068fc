"""Scheduler ticks over 10,000 routines: the first tick after a worker starts, and the steady ticks after it.

    python bench/scheduler_tick.py [--routines 10000] [--tick-s 5] [--hours 2] [--rounds 5]

Routines get a mix of crons (fixed times, hourly, `H` hashed fields) in a mix of IANA time zones. The
first tick is a fresh `Scheduler` over the window that ends at 2025-03-30 00:00:00 UTC (a whole hour:
the most schedules to look at); the steady ticks are the consecutive windows of `--tick-s` over
`--hours` that follow, across Europe's spring DST change at 01:00 UTC.

Baseline, in the same run: croniter for every schedule over the first window, once per cron, zone and
hash — what the first tick cost before this scheduler. It is measured `--rounds` times beside the
first ticks (alternated round by round) and `--rounds` times between slices of the steady ticks, so
the machine's noise falls on both; every figure is also given as a ratio of it. Each round checks that
the first tick and the baseline found the same slots. The same ticks over 1 routine show the fixed cost.

Targets: first tick ≤ 200 ms, steady ticks ≤ 50 ms (p99), set when the baseline took 1.3 s on a quiet
machine: as ratios, ≤ 0.154× and ≤ 0.038× of the baseline. A busy machine slows both alike, so a
target is met when the figure or its ratio is within it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

from app.core.domain import Routine, Schedule, Triggers
from app.triggers.schedules import Scheduler, Slot, latest_fire

CRONS = ("H * * * *", "H H * * *", "0 2 * * *", "30 7 * * 1-5", "H 3 * * 0", "15 */2 * * *", "H H/4 * * *")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Sydney", "America/Sao_Paulo")
QUIET_BASELINE_MS = 1300.0  # the first tick before this scheduler, on a quiet machine (issue 13)
FIRST_TARGET_MS, STEADY_TARGET_MS = 200.0, 50.0


def routines(count: int) -> list[Routine]:
    return [
        Routine(
            name=f"routine-{i}",
            repo="acme/api",
            prompt="p",
            on=Triggers(schedule=(Schedule(CRONS[i % len(CRONS)], ZONES[i % len(ZONES)]),)),
        )
        for i in range(count)
    ]


def croniter_every_schedule(items: list[Routine], t0: float, t1: float) -> list[Slot]:
    """The baseline: croniter asked about every schedule, once per (cron, zone, hash) like the old cache."""
    known: dict[tuple[str, str, str], float | None] = {}
    slots = []
    for routine in items:
        for s in routine.on.schedule:
            key = (s.cron, s.timezone, routine.name if "H" in s.cron else "")
            if key not in known:
                known[key] = latest_fire(s, routine.name, t0, t1)
            if (at := known[key]) is not None:
                slots.append(Slot(routine.name, at, s.cron, s.timezone))
    return slots


def timed_ms(action: Callable[[], list[Slot]]) -> tuple[float, list[Slot]]:
    began = time.perf_counter()
    result = action()
    return (time.perf_counter() - began) * 1000, result


def first_ticks(items: list[Routine], start: float, tick_s: float, rounds: int) -> tuple[list[float], list[float]]:
    """(first tick ms, baseline ms) per round, alternated; each round checks both found the same slots."""
    firsts, baselines = [], []
    for _ in range(rounds):
        base_ms, expected = timed_ms(lambda: croniter_every_schedule(items, start - tick_s, start))
        first_ms, found = timed_ms(lambda: Scheduler().due(items, start - tick_s, start))
        if found != expected:
            raise SystemExit("the first tick and croniter disagree on the slots due")
        firsts.append(first_ms)
        baselines.append(base_ms)
    return firsts, baselines


def steady_ticks(
    items: list[Routine], start: float, tick_s: float, count: int, baselines: int
) -> tuple[list[float], int, list[float]]:
    """(ms per tick, slots due, baseline ms) over `count` consecutive windows after a first tick, with
    `baselines` measurements of the baseline spread between them."""
    scheduler = Scheduler()
    scheduler.due(items, start - tick_s, start)
    steady, fired, base, t = [], 0, [], start
    for n in range(count):
        if baselines and n % -(-count // baselines) == 0:
            base.append(timed_ms(lambda: croniter_every_schedule(items, start - tick_s, start))[0])
        began = time.perf_counter()
        fired += len(scheduler.due(items, t, t + tick_s))
        steady.append((time.perf_counter() - began) * 1000)
        t += tick_s
    return steady, fired, base


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--routines", type=int, default=10_000)
    parser.add_argument("--tick-s", type=float, default=5.0)
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    start = datetime(2025, 3, 30, 0, 0, tzinfo=UTC).timestamp()
    count = int(args.hours * 3600 / args.tick_s)
    many, one = routines(args.routines), routines(1)
    print(f"{args.routines} routines; first window ({args.tick_s:g} s) ends 2025-03-30 00:00 UTC; {args.rounds} rounds")

    firsts, first_bases = first_ticks(many, start, args.tick_s, args.rounds)
    one_first = statistics.median(first_ticks(one, start, args.tick_s, args.rounds)[0])
    steady, fired, steady_bases = steady_ticks(many, start, args.tick_s, count, args.rounds)
    one_steady = steady_ticks(one, start, args.tick_s, count, 0)[0]

    first, base = statistics.median(firsts), statistics.median(first_bases + steady_bases)
    first_ratio = statistics.median(f / b for f, b in zip(firsts, first_bases, strict=True))
    steady_base = statistics.median(steady_bases)
    p50_ratio, p99_ratio = statistics.median(steady) / steady_base, p99(steady) / steady_base
    row("baseline: croniter for every schedule", f"{base:9.2f} ms   (median of {len(first_bases + steady_bases)})")
    row("first tick, 1 routine", f"{one_first:9.2f} ms")
    row(f"first tick, {args.routines} routines", f"{first:9.2f} ms   {first_ratio:.4f}x baseline")
    row("steady ticks, 1 routine", spread(one_steady))
    row(f"steady ticks, {args.routines} routines", f"{spread(steady)}   ({count} ticks, {fired} slots due)")
    row("", f"p50 {p50_ratio:.4f}x  p99 {p99_ratio:.4f}x baseline")
    verdict("first tick", FIRST_TARGET_MS, first, first_ratio)
    verdict("steady tick p99", STEADY_TARGET_MS, p99(steady), p99_ratio)


def verdict(what: str, target_ms: float, measured_ms: float, ratio: float) -> None:
    limit = target_ms / QUIET_BASELINE_MS
    met = measured_ms <= target_ms or ratio <= limit
    row(
        f"target {what} <= {target_ms:g} ms",
        f"{'meets' if met else 'MISSES'}   ({measured_ms:.1f} ms; {ratio:.4f}x baseline, limit {limit:.3f}x)",
    )


def row(label: str, text: str) -> None:
    print(f"  {label:<40}{text}")


def spread(samples: list[float]) -> str:
    return f"median {statistics.median(samples):7.3f} ms  p99 {p99(samples):7.3f} ms  max {max(samples):7.3f} ms"


if __name__ == "__main__":
    main()
