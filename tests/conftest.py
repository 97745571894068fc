"""Shared fixtures: a real Redis database, flushed around each test that uses it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis import asyncio as aioredis

TEST_REDIS_URL = os.environ.get("ROUTINES_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(
            f"the tests need a Redis at {TEST_REDIS_URL} ({exc}); start redis-server or set ROUTINES_TEST_REDIS_URL"
        )
    yield TEST_REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
