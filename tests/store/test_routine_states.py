"""Routine states in Redis: paused and archived routines are refused with 409 until resumed."""

from __future__ import annotations

import pytest
from redis import asyncio as aioredis

from app.core.domain import Limits, Routine
from app.core.errors import Refused
from app.store.routine_states import ACTIVE, ARCHIVED, PAUSED, RoutineStates
from tests.support.clock import Clock

NIGHTLY = Routine(name="nightly", repo="acme/api", prompt="p", limits=Limits(runs_per_day=2), source="nightly.md")


async def test_pause_archive_and_resume_decide_whether_a_routine_may_run(aredis: aioredis.Redis) -> None:
    states = RoutineStates(aredis, clock=Clock(1_735_730_000.0))
    await states.check_active(NIGHTLY)
    paused = await states.set("nightly", PAUSED, by="ops")
    assert (paused.state, paused.since, paused.by) == (PAUSED, 1_735_730_000.0, "ops")
    with pytest.raises(Refused) as refused:
        await states.check_active(NIGHTLY)
    assert refused.value.status == 409 and refused.value.limit == "paused"
    assert "routines resume nightly" in str(refused.value)
    await states.set("other", ARCHIVED)
    assert {n: s.state for n, s in (await states.all()).items()} == {"nightly": PAUSED, "other": ARCHIVED}
    await states.set("nightly", ACTIVE)
    await states.check_active(NIGHTLY)
    assert (await states.get("nightly")).state == ACTIVE and list(await states.all()) == ["other"]


async def test_an_unknown_state_is_refused(aredis: aioredis.Redis) -> None:
    with pytest.raises(ValueError, match="unknown routine state 'sleeping'"):
        await RoutineStates(aredis).set("nightly", "sleeping")
