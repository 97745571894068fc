"""An event sink that keeps what it is given, for tests of code that emits run events."""

from __future__ import annotations

import copy

from app.core.domain import JSON


class Recorder:
    """`emit(type, data)` as a run's log takes it; each event is copied as it arrives."""

    def __init__(self) -> None:
        self.events: list[tuple[str, JSON]] = []

    async def emit(self, type: str, data: JSON) -> None:
        self.events.append((type, copy.deepcopy(data)))

    def of(self, type: str) -> list[JSON]:
        return [data for t, data in self.events if t == type]

    @property
    def types(self) -> list[str]:
        return [t for t, _ in self.events]
