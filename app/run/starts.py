"""Runs that are starting go first: a worker's later work waits, briefly, for the runs on their way to
their first model request.

A run's start (job taken → repository, token, workspace → the model has its first request and begins
to answer) is short and holds up whoever fired it; what comes after (the sandbox, tool calls,
snapshots, delivery) is most of the CPU a run costs and nobody waits on it by the second. When many
runs arrive at once they share the same cores, so without an order each start is slowed by every
other run's tool calls and the last run of a burst sends its first request only when nearly all the
burst's work is done. So every step after a run's start first yields to the starts of other runs that
are under way in this worker. A start ends when the model has begun to answer, not when the request
is handed to the client: the runs it held back would otherwise take the event loop and the cores
while the request is still being sent.

The yield is bounded, per step: a start holds others back for at most `PRIORITY_S` after it began, so
a run whose start is slow or stuck (a cold clone of a big repository, a GitHub that does not answer)
delays another's next step by that much at most; and a step waits only for the starts already under
way when it asked, so new runs cannot keep a step waiting. A run that takes many steps while new runs
keep arriving can wait at several of them: each wait is for starts that are younger than `PRIORITY_S`
and were under way when it asked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from app.core.domain import JSON

PRIORITY_S = 2.0
"""How long a start holds back the later steps of other runs in the worker, at most."""


class Start:
    """One run's start: over when the model began to answer its first request (the model client says so
    through MODEL_ANSWERING, or the turn is recorded), or when the run ends without one."""

    def __init__(self, starts: Starts, began: float) -> None:
        self._starts = starts
        self.began = began
        self.over: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(self) -> None:
        if not self.over.done():
            self.over.set_result(None)
        self._starts.pending.discard(self)

    def saw(self, type: str, data: JSON) -> None:
        """An event of the run was recorded: its first `model.turn` ends the start (if the model client
        did not say earlier that the model was answering)."""
        if type == "model.turn":
            self.done()


class Starts:
    """The starts under way in one worker process (one event loop)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, priority_s: float = PRIORITY_S) -> None:
        self.clock = clock
        self.priority_s = priority_s
        self.pending: set[Start] = set()

    def begin(self) -> Start:
        start = Start(self, self.clock())
        self.pending.add(start)
        return start

    async def yield_to_others(self, own: Start | None = None) -> None:
        """Wait until every other start under way now is over or has held others back for `priority_s`."""
        waiting = [start for start in self.pending if start is not own]
        while waiting:
            now = self.clock()
            waiting = [s for s in waiting if not s.over.done() and s.began + self.priority_s > now]
            if not waiting:
                return
            first_expiry = min(s.began for s in waiting) + self.priority_s
            await asyncio.wait([s.over for s in waiting], timeout=first_expiry - now)
