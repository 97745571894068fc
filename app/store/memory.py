"""Each routine's memory folder between runs, in Redis (the memory tool is app.agent.tools.memory)."""

from __future__ import annotations

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from app.core.errors import StoreError


class RedisMemoryStore:
    """One Redis hash per routine, `<prefix>memory:<routine>`: field = relative path, value = bytes.

    A save replaces the whole hash in one transaction; two runs of one routine saving at once
    leave the later save.
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = "routines:") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, routine: str) -> str:
        return f"{self.prefix}memory:{routine}"

    async def load(self, routine: str) -> dict[str, bytes]:
        try:
            raw: dict[bytes, bytes] = await self.redis.hgetall(self._key(routine))  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not read the memory of routine {routine}: Redis failed ({exc})") from None
        return {key.decode(): value for key, value in raw.items()}

    async def save(self, routine: str, files: dict[str, bytes]) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(routine))
                if files:
                    pipe.hset(self._key(routine), mapping=dict(files))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not save the memory of routine {routine}: Redis failed ({exc})") from None
