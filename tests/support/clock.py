"""Time the test moves: a clock to pass as `clock=`, and a sleep to pass as `sleep=`, instead of waiting."""

from __future__ import annotations

import asyncio


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Ticks:
    """An `asyncio.sleep` stand-in that returns only when the test calls `tick()`; `waits` are the
    durations asked for."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._go: asyncio.Queue[None] = asyncio.Queue()
        self._waiting = asyncio.Condition()

    async def __call__(self, seconds: float) -> None:
        async with self._waiting:
            self.waits.append(seconds)
            self._waiting.notify_all()
        await self._go.get()

    async def tick(self, timeout_s: float = 10) -> None:
        """End one wait, then return once the sleeper is waiting again (its work between waits is done)."""
        async with asyncio.timeout(timeout_s), self._waiting:
            await self._waiting.wait_for(lambda: len(self.waits) > 0)
            count = len(self.waits)
            self._go.put_nowait(None)
            await self._waiting.wait_for(lambda: len(self.waits) > count)
