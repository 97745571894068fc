"""Daily quotas in Redis: per routine and for all routines, refused with 429 until the next UTC day."""

from __future__ import annotations

import pytest
from redis import asyncio as aioredis

from app.core.domain import Limits, Routine
from app.core.errors import Refused
from app.store.quotas import Quotas
from tests.support.clock import Clock

NIGHTLY = Routine(name="nightly", repo="acme/api", prompt="p", limits=Limits(runs_per_day=2), source="nightly.md")
OTHER = Routine(name="other", repo="acme/api", prompt="p")


async def test_runs_per_day_and_the_global_cap_refuse_with_429_until_the_next_utc_day(
    aredis: aioredis.Redis,
) -> None:
    clock = Clock(1_735_730_000.0)  # 2025-01-01 11:13 UTC
    quotas = Quotas(aredis, clock=clock)
    await quotas.take(NIGHTLY, 3)
    await quotas.take(NIGHTLY, 3)
    with pytest.raises(Refused) as per_routine:
        await quotas.take(NIGHTLY, 3)
    assert per_routine.value.status == 429 and per_routine.value.limit == "runs_per_day"
    assert "limits.runs_per_day" in str(per_routine.value) and "nightly.md" in str(per_routine.value)
    await quotas.take(OTHER, 3)
    with pytest.raises(Refused) as overall:
        await quotas.take(OTHER, 3)
    assert overall.value.limit == "max_runs_per_day" and "ROUTINES_MAX_RUNS_PER_DAY" in str(overall.value)
    assert await quotas.runs_today(["nightly", "other"]) == {"nightly": 2, "other": 1}
    clock.advance(86400)
    await quotas.take(NIGHTLY, 3)
    assert await quotas.runs_today(["nightly"]) == {"nightly": 1}


async def test_no_limit_counts_without_refusing(aredis: aioredis.Redis) -> None:
    quotas = Quotas(aredis)
    for _ in range(5):
        await quotas.take(OTHER, None)
    assert await quotas.runs_today(["other", "nightly"]) == {"other": 5, "nightly": 0}
    assert await quotas.runs_today([]) == {}
