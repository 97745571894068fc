"""Cancel flags: `<prefix>cancel:<run>` is set when a running run must stop; the runner checks it each turn."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from redis import asyncio as aioredis

from app.store.failures import redis_failure

_CANCEL_TTL_S = 86400


class CancelFlags:
    def __init__(self, redis: aioredis.Redis, prefix: str = "routines:") -> None:
        self.redis = redis
        self.prefix = prefix

    async def request(self, run_id: str) -> None:
        """Ask a running run to stop; the runner checks `requested` before each model turn."""
        with redis_failure(f"cancel run {run_id}"):
            await self.redis.set(f"{self.prefix}cancel:{run_id}", "1", ex=_CANCEL_TTL_S)

    async def requested(self, run_id: str) -> bool:
        with redis_failure(f"read the cancel flag of run {run_id}"):
            return bool(await self.redis.exists(f"{self.prefix}cancel:{run_id}"))

    def check(self, run_id: str) -> Callable[[], Awaitable[bool]]:
        """A no-argument check for the agent loop: True once the run was asked to stop."""
        return lambda: self.requested(run_id)
