"""Whether a routine may start runs: active, paused or archived, kept in the hash `<prefix>lifecycle`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis import asyncio as aioredis

from app.core.domain import JSON, Routine
from app.core.errors import Refused
from app.store.failures import redis_failure, text

ACTIVE, PAUSED, ARCHIVED = "active", "paused", "archived"


@dataclass(frozen=True)
class RoutineState:
    state: str = ACTIVE
    since: float | None = None
    by: str | None = None

    def to_json(self) -> JSON:
        return {"state": self.state, "since": self.since, "by": self.by}


class RoutineStates:
    """Routine name → state; an active routine has no entry."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str = "routines:", *, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = redis
        self.key = prefix + "lifecycle"
        self.clock = clock

    async def all(self) -> dict[str, RoutineState]:
        """Every routine that is not active, by name (one round trip: the scheduler reads it each tick)."""
        with redis_failure("read routine states"):
            raw = await self.redis.hgetall(self.key)  # type: ignore[misc]
        return {text(k) or "": RoutineState(**json.loads(v)) for k, v in raw.items()}

    async def get(self, name: str) -> RoutineState:
        with redis_failure(f"read the state of routine {name}"):
            raw = await self.redis.hget(self.key, name)  # type: ignore[misc]
        return RoutineState(**json.loads(raw)) if raw else RoutineState()

    async def set(self, name: str, state: str, by: str | None = None) -> RoutineState:
        """Pause, archive or resume (`active`) the routine `name`."""
        if state not in (ACTIVE, PAUSED, ARCHIVED):
            raise ValueError(f"unknown routine state {state!r}")
        new = RoutineState(state, self.clock(), by)
        with redis_failure(f"change the state of routine {name}"):
            if state == ACTIVE:
                await self.redis.hdel(self.key, name)  # type: ignore[misc]
            else:
                await self.redis.hset(self.key, name, json.dumps(new.to_json()))  # type: ignore[misc]
        return new

    async def check_active(self, routine: Routine) -> None:
        """Raise Refused when the routine is paused or archived."""
        current = await self.get(routine.name)
        if current.state == ACTIVE:
            return
        how = f"`routines resume {routine.name}` or POST /api/routines/{routine.name}/resume"
        raise Refused(current.state, 409, f"routine {routine.name!r} is {current.state}; resume it with {how}")
