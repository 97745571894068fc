"""Daily run quotas per UTC day: `<prefix>quota:<routine>:<day>` per routine, `<prefix>quota-all:<day>` for all."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from redis import asyncio as aioredis

from app.core.domain import Routine
from app.core.errors import Refused
from app.store.failures import redis_failure

_DAY_S = 86400
# KEYS: routine counter, global counter; ARGV: routine limit, global cap (-1: none), ttl → 0 ok, 1 routine, 2 global
_TAKE = """
local mine = tonumber(redis.call('GET', KEYS[1]) or '0')
local all = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) >= 0 and mine >= tonumber(ARGV[1]) then return 1 end
if tonumber(ARGV[2]) >= 0 and all >= tonumber(ARGV[2]) then return 2 end
redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('INCR', KEYS[2]) redis.call('EXPIRE', KEYS[2], ARGV[3])
return 0
"""


class Quotas:
    """Counts the runs started today, and refuses one past `limits.runs_per_day` or the global cap."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str = "routines:", *, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        self._take = redis.register_script(_TAKE)

    def _day(self) -> str:
        return datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d")

    async def take(self, routine: Routine, max_runs_per_day: int | None) -> None:
        """Count one run today (UTC) for the routine and for all routines, or raise Refused if either is full."""
        mine = routine.limits.runs_per_day
        day = self._day()
        keys = [f"{self.prefix}quota:{routine.name}:{day}", f"{self.prefix}quota-all:{day}"]
        args = [-1 if mine is None else mine, -1 if max_runs_per_day is None else max_runs_per_day, 2 * _DAY_S]
        with redis_failure(f"count the runs of routine {routine.name}"):
            verdict = int(await self._take(keys=keys, args=args))
        if verdict == 1:
            raise Refused(
                "runs_per_day",
                429,
                f"routine {routine.name!r} reached limits.runs_per_day ({mine} runs today, UTC); it runs again "
                f"tomorrow, or raise limits.runs_per_day in {routine.source or 'the routine'}",
            )
        if verdict == 2:
            raise Refused(
                "max_runs_per_day",
                429,
                f"all routines together reached ROUTINES_MAX_RUNS_PER_DAY ({max_runs_per_day} runs today, UTC); "
                "runs start again tomorrow, or raise ROUTINES_MAX_RUNS_PER_DAY",
            )

    async def runs_today(self, names: Iterable[str]) -> dict[str, int]:
        names = list(names)
        if not names:
            return {}
        day = self._day()
        with redis_failure("read the run counters"):
            counts = await self.redis.mget([f"{self.prefix}quota:{n}:{day}" for n in names])
        return {n: int(c or 0) for n, c in zip(names, counts, strict=True)}
