"""A tunnel's watch for silence: it ends when no byte has moved either way for `limit_s`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any


class Idle:
    """Call `touch()` whenever bytes move; `first(...)` waits for the relay to end or to fall silent.
    A `limit_s` of None never times out."""

    def __init__(self, limit_s: float | None) -> None:
        self.limit_s = limit_s
        self.moved_at = time.monotonic()

    def touch(self) -> None:
        self.moved_at = time.monotonic()

    async def first(self, futures: Iterable[asyncio.Future[Any]]) -> bool:
        """True once one of `futures` is done; False once nothing has moved for `limit_s` (the futures
        are left as they are)."""
        waiting = list(futures)
        while True:
            timeout = None if self.limit_s is None else self.moved_at + self.limit_s - time.monotonic()
            if timeout is not None and timeout <= 0:
                return False
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if done:
                return True
