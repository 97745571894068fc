"""Redis failures become StoreError where they enter, with what we were doing and how to fix it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from app.core.errors import StoreError


@contextmanager
def redis_failure(what: str) -> Iterator[None]:
    """Raise StoreError("could not <what>: Redis failed …") for any Redis or socket error inside."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreError(f"could not {what}: Redis failed ({exc}); check REDIS_URL and that the server runs") from None


def text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
