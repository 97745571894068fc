"""Routine lifecycle and limits in Redis: paused/archived, daily run quotas, concurrency groups, cancel flags.

Keys (under `prefix`): `lifecycle` (hash: routine → state JSON), `quota:<routine>:<day>` and
`quota-all:<day>` (run counters per UTC day), `group:<group>:active` (the run that holds the group),
`group:<group>:waiting` (runs queued behind it, oldest first), `rungroup:<run>` (a run's group),
`cancel:<run>` (set when a running run must stop).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from app.core.domain import JSON, TERMINAL_STATES, Routine, Run
from app.core.errors import RoutinesError, StoreError

ACTIVE, PAUSED, ARCHIVED = "active", "paused", "archived"
_DAY_S = 86400
_GROUP_TTL_S = 7 * _DAY_S
_CANCEL_TTL_S = _DAY_S

# A run is live unless its record is gone or terminal. `promote` hands the group to the oldest live waiter.
_LUA_COMMON = """
local terminal = {TERMINAL}
local function live(id)
  local raw = redis.call('GET', ARGV[1] .. id)
  if not raw then return false end
  return not terminal[cjson.decode(raw)['state']]
end
local function promote()
  while true do
    local nxt = redis.call('LPOP', KEYS[2])
    if not nxt then redis.call('DEL', KEYS[1]) return false end
    if live(nxt) then redis.call('SET', KEYS[1], nxt, 'EX', ARGV[2]) return nxt end
  end
end
""".replace("TERMINAL", ", ".join(f"['{s.value}'] = true" for s in TERMINAL_STATES))
# KEYS: active, waiting, rungroup; ARGV: run key prefix, ttl, run id, group → {run holding the group, run to start}
_ADMIT = (
    _LUA_COMMON
    + """
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[2])
local active = redis.call('GET', KEYS[1])
local start = ''
if active and not live(active) then active = promote() start = active or '' end
if active then
  redis.call('RPUSH', KEYS[2], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return {active, start}
end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[2])
return {'', ARGV[3]}
"""
)
# KEYS: active, waiting; ARGV: run key prefix, ttl, run id → the run to start next, or nil
_RELEASE = (
    _LUA_COMMON
    + """
if redis.call('GET', KEYS[1]) == ARGV[3] then return promote() end
redis.call('LREM', KEYS[2], 0, ARGV[3])
return false
"""
)
# KEYS: routine counter, global counter; ARGV: routine limit, global cap (-1: none), ttl → 0 ok, 1 routine, 2 global
_QUOTA = """
local mine = tonumber(redis.call('GET', KEYS[1]) or '0')
local all = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) >= 0 and mine >= tonumber(ARGV[1]) then return 1 end
if tonumber(ARGV[2]) >= 0 and all >= tonumber(ARGV[2]) then return 2 end
redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('INCR', KEYS[2]) redis.call('EXPIRE', KEYS[2], ARGV[3])
return 0
"""


class Refused(RoutinesError):
    """A run was not started because of `limit` (paused, archived, runs_per_day, max_runs_per_day).

    `status` is the HTTP answer (409 for a state, 429 for a quota); `run` is the refused run, recorded as
    cancelled, when there is one.
    """

    def __init__(self, limit: str, status: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.status = status
        self.run: Run | None = None


@dataclass(frozen=True)
class RoutineState:
    state: str = ACTIVE
    since: float | None = None
    by: str | None = None

    def to_json(self) -> JSON:
        return {"state": self.state, "since": self.since, "by": self.by}


@dataclass(frozen=True)
class Admission:
    """What joining a concurrency group decided: `start` is the run to enqueue now (None: nothing),
    `behind` the run the new one waits for (None: it starts at once)."""

    start: str | None
    behind: str | None


@contextmanager
def _redis(what: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreError(f"could not {what}: Redis failed ({exc}); check REDIS_URL and that the server runs") from None


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Lifecycle:
    """Routine states, quotas and concurrency groups, sharing the store's Redis and key prefix."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str = "routines:", *, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        self._admit = redis.register_script(_ADMIT)
        self._release = redis.register_script(_RELEASE)
        self._quota = redis.register_script(_QUOTA)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def states(self) -> dict[str, RoutineState]:
        """Every routine that is not active, by name (one round trip: the scheduler reads it each tick)."""
        with _redis("read routine states"):
            raw = await self.redis.hgetall(self._key("lifecycle"))  # type: ignore[misc]
        return {_text(k) or "": RoutineState(**json.loads(v)) for k, v in raw.items()}

    async def state(self, name: str) -> RoutineState:
        with _redis(f"read the state of routine {name}"):
            raw = await self.redis.hget(self._key("lifecycle"), name)  # type: ignore[misc]
        return RoutineState(**json.loads(raw)) if raw else RoutineState()

    async def set_state(self, name: str, state: str, by: str | None = None) -> RoutineState:
        """Pause, archive or resume (`active`) the routine `name`."""
        if state not in (ACTIVE, PAUSED, ARCHIVED):
            raise ValueError(f"unknown routine state {state!r}")
        new = RoutineState(state, self.clock(), by)
        with _redis(f"change the state of routine {name}"):
            if state == ACTIVE:
                await self.redis.hdel(self._key("lifecycle"), name)  # type: ignore[misc]
            else:
                await self.redis.hset(self._key("lifecycle"), name, json.dumps(new.to_json()))  # type: ignore[misc]
        return new

    async def check_active(self, routine: Routine) -> None:
        """Raise Refused when the routine is paused or archived."""
        current = await self.state(routine.name)
        if current.state == ACTIVE:
            return
        how = f"`routines resume {routine.name}` or POST /api/routines/{routine.name}/resume"
        raise Refused(current.state, 409, f"routine {routine.name!r} is {current.state}; resume it with {how}")

    def _day(self) -> str:
        return datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d")

    async def take_quota(self, routine: Routine, max_runs_per_day: int | None) -> None:
        """Count one run today (UTC) for the routine and for all routines, or raise Refused if either is full."""
        mine = routine.limits.runs_per_day
        day = self._day()
        keys = [self._key("quota", routine.name, day), self._key("quota-all", day)]
        args = [-1 if mine is None else mine, -1 if max_runs_per_day is None else max_runs_per_day, 2 * _DAY_S]
        with _redis(f"count the runs of routine {routine.name}"):
            verdict = int(await self._quota(keys=keys, args=args))
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
        with _redis("read the run counters"):
            counts = await self.redis.mget([self._key("quota", n, day) for n in names])
        return {n: int(c or 0) for n, c in zip(names, counts, strict=True)}

    def _group_keys(self, group: str) -> list[str]:
        return [self._key("group", group, "active"), self._key("group", group, "waiting")]

    async def admit(self, run_id: str, group: str) -> Admission:
        """Join `group`: the run holds it at once when it is free, else waits behind the run holding it."""
        keys = [*self._group_keys(group), self._key("rungroup", run_id)]
        with _redis(f"join concurrency group {group}"):
            behind, start = await self._admit(keys=keys, args=[self._key("run", ""), _GROUP_TTL_S, run_id, group])
        return Admission(start=_text(start) or None, behind=_text(behind) or None)

    async def release(self, run_id: str) -> str | None:
        """The run ended: free its group and return the next waiting run to start (None: none, or no group)."""
        with _redis(f"release the concurrency group of run {run_id}"):
            group = _text(await self.redis.get(self._key("rungroup", run_id)))
            if group is None:
                return None
            nxt = await self._release(keys=self._group_keys(group), args=[self._key("run", ""), _GROUP_TTL_S, run_id])
        return _text(nxt)

    async def holders(self) -> list[str]:
        """The run holding each concurrency group."""
        with _redis("list the concurrency groups"):
            keys = [key async for key in self.redis.scan_iter(match=self._key("group", "*", "active"), count=500)]
            held = await self.redis.mget(keys) if keys else []
        return [run for run in (_text(value) for value in held) if run is not None]

    async def members(self, group: str) -> list[str]:
        """The run holding `group`, then the runs waiting behind it, oldest first."""
        active, waiting = self._group_keys(group)
        with _redis(f"read concurrency group {group}"):
            holder = _text(await self.redis.get(active))
            queued = [_text(x) or "" for x in await self.redis.lrange(waiting, 0, -1)]  # type: ignore[misc]
        return ([holder] if holder else []) + queued

    async def request_cancel(self, run_id: str) -> None:
        """Ask a running run to stop; the runner checks `cancel_requested` before each model turn."""
        with _redis(f"cancel run {run_id}"):
            await self.redis.set(self._key("cancel", run_id), "1", ex=_CANCEL_TTL_S)

    async def cancel_requested(self, run_id: str) -> bool:
        with _redis(f"read the cancel flag of run {run_id}"):
            return bool(await self.redis.exists(self._key("cancel", run_id)))

    def cancel_check(self, run_id: str) -> Callable[[], Awaitable[bool]]:
        """A no-argument check for the agent loop: True once the run was asked to stop."""
        return lambda: self.cancel_requested(run_id)

    async def describe(self, routines: Iterable[Routine], max_runs_per_day: int | None = None) -> dict[str, JSON]:
        """Lifecycle fields for the API, by routine name: state, since, runs_today, runs_per_day."""
        routines = list(routines)
        states = await self.states()
        counts = await self.runs_today(r.name for r in routines)
        return {
            r.name: {
                **states.get(r.name, RoutineState()).to_json(),
                "runs_today": counts.get(r.name, 0),
                "runs_per_day": r.limits.runs_per_day,
            }
            for r in routines
        }
