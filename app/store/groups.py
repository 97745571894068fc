"""Concurrency groups: one run of a group at a time, the others waiting in order.

Keys (under `prefix`): `group:<group>:active` (the run that holds the group), `group:<group>:waiting`
(runs queued behind it, oldest first), `rungroup:<run>` (a run's group). A holder whose run record is
gone or terminal is skipped, so a crashed worker never blocks its group for good.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import asyncio as aioredis

from app.core.domain import TERMINAL_STATES
from app.store.failures import redis_failure, text

_GROUP_TTL_S = 7 * 86400

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
@dataclass(frozen=True)
class Admission:
    """What joining a concurrency group decided: `start` is the run to enqueue now (None: nothing),
    `behind` the run the new one waits for (None: it starts at once)."""

    start: str | None
    behind: str | None


class ConcurrencyGroups:
    def __init__(self, redis: aioredis.Redis, prefix: str = "routines:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._admit = redis.register_script(_ADMIT)
        self._release = redis.register_script(_RELEASE)

    def _keys(self, group: str) -> list[str]:
        return [f"{self.prefix}group:{group}:active", f"{self.prefix}group:{group}:waiting"]

    async def admit(self, run_id: str, group: str) -> Admission:
        """Join `group`: the run holds it at once when it is free, else waits behind the run holding it."""
        keys = [*self._keys(group), f"{self.prefix}rungroup:{run_id}"]
        with redis_failure(f"join concurrency group {group}"):
            behind, start = await self._admit(keys=keys, args=[f"{self.prefix}run:", _GROUP_TTL_S, run_id, group])
        return Admission(start=text(start) or None, behind=text(behind) or None)

    async def release(self, run_id: str) -> str | None:
        """The run ended: free its group and return the next waiting run to start (None: none, or no group)."""
        with redis_failure(f"release the concurrency group of run {run_id}"):
            group = text(await self.redis.get(f"{self.prefix}rungroup:{run_id}"))
            if group is None:
                return None
            nxt = await self._release(keys=self._keys(group), args=[f"{self.prefix}run:", _GROUP_TTL_S, run_id])
        return text(nxt)

    async def holders(self) -> list[str]:
        """The run holding each concurrency group."""
        with redis_failure("list the concurrency groups"):
            match = f"{self.prefix}group:*:active"
            keys = [key async for key in self.redis.scan_iter(match=match, count=500)]
            held = await self.redis.mget(keys) if keys else []
        return [run for run in (text(value) for value in held) if run is not None]

    async def members(self, group: str) -> list[str]:
        """The run holding `group`, then the runs waiting behind it, oldest first."""
        active, waiting = self._keys(group)
        with redis_failure(f"read concurrency group {group}"):
            holder = text(await self.redis.get(active))
            queued = [text(x) or "" for x in await self.redis.lrange(waiting, 0, -1)]  # type: ignore[misc]
        return ([holder] if holder else []) + queued
