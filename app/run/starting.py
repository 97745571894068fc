"""The agent's hands while its sandbox is still starting: the first model request need not wait for them.

A conversation's first request holds the system prompt, the task and the tool definitions, none of which
the sandbox makes; only a tool call needs the sandbox. So the runner starts the sandbox and the
conversation side by side, and every call on these hands waits until the sandbox is up (and fails as
its start failed). Nothing reaches the sandbox any sooner: this only stops the model waiting for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from app.core.domain import JSON
from app.core.ports import CommandResult, Hands, Staged, StageLimits


class StartingHands:
    """`Hands` whose calls first await `started()`: the real hands once their start is over, or what the
    start raised (a caller cancelled meanwhile must leave the start alone: its owner ends it), then
    `before()` (the worker's other runs' starts go first: app.run.starts). `workdir` is the path the real
    hands will have."""

    def __init__(
        self,
        workdir: Path,
        started: Callable[[], Awaitable[Hands]],
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.workdir = workdir
        self._started = started
        self._before = before

    async def ready(self) -> Hands:
        hands = await self._started()
        if self._before is not None:
            await self._before()
        return hands

    async def run(self, command: str, timeout_s: float) -> CommandResult:
        return await (await self.ready()).run(command, timeout_s)

    async def restart(self) -> None:
        await (await self.ready()).restart()

    async def close(self) -> None:
        await (await self.ready()).close()

    async def stage(self, base: str, seed: bytes | None, limits: StageLimits) -> Staged:
        return await (await self.ready()).stage(base, seed, limits)

    async def objects(self, oids: list[str], max_bytes: int, budget: int) -> list[tuple[str, int, bytes]]:
        return await (await self.ready()).objects(oids, max_bytes, budget)

    async def edit(self, params: JSON, max_characters: int | None = None) -> str:
        return await (await self.ready()).edit(params, max_characters)

    async def stop(self) -> None:
        await (await self.ready()).stop()

    async def names(self) -> list[str]:
        return await (await self.ready()).names()

    async def pack(self, created: list[str], max_bytes: int) -> int:
        return await (await self.ready()).pack(created, max_bytes)

    async def unpack(self) -> int:
        return await (await self.ready()).unpack()

    async def ignore(self, names: list[str]) -> None:
        await (await self.ready()).ignore(names)
