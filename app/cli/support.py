"""What the CLI commands share: a Redis for this data dir, and Services built for one command."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from app.core.config import Settings
from app.services import Services, build
from app.store import embedded as embedded_redis


@contextmanager
def redis_for(settings: Settings, *, say: Callable[[str], None]) -> Iterator[Settings]:
    """Settings with a Redis: REDIS_URL, else the embedded server of this data dir (started if needed)."""
    if settings.redis_url:
        yield settings
        return
    server = embedded_redis.attach_or_start(settings.data_dir)
    if server.process is not None:
        say(f"REDIS_URL is not set: started embedded {server.binary} at {server.url} (data in {server.data_dir})")
    try:
        yield dataclasses.replace(settings, redis_url=server.url)
    finally:
        server.stop()


def with_services(settings: Settings, fn: Callable[[Services], Awaitable[int]]) -> int:
    """Run `fn` with Services built for this one command, then close them; returns its exit status."""
    with redis_for(settings, say=lambda m: print(m, file=sys.stderr)) as s:

        async def main() -> int:
            services = await build(s)
            try:
                return await fn(services)
            finally:
                await services.close()

        return asyncio.run(main())
