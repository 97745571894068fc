"""What one run counts for `GET /metrics`, read off the events it records and the sandbox it starts."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.core.domain import JSON, Run, RunState
from app.core.metrics import (
    EGRESS_DENIED,
    FIRST_MODEL_REQUEST,
    MODEL_COST,
    MODEL_TOKENS,
    MODEL_TURNS,
    SANDBOX_FAILURES,
    SANDBOX_STARTS,
)
from app.core.ports import Metrics

TOKEN_KINDS = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_creation_input_tokens": "cache_creation_input",
    "cache_read_input_tokens": "cache_read_input",
}


class RunMeter:
    """Counts a run's model turns, tokens and cost (`model.turn`, `context.compacted`), its egress denials
    (`egress.denied`), the time from its fire to its first `model.request`, and its sandbox starts.

    Every event is recorded once in the log, so counting events counts each thing once, a resumed run
    included; the first request of a resumed run was timed (or missed) by its first attempt."""

    def __init__(self, metrics: Metrics, run: Run, clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.routine = run.routine
        self.fired_at = run.created_at
        self.clock = clock
        self._time_first_request = run.state is RunState.QUEUED

    def saw(self, type: str, data: JSON) -> None:
        """Count what the event `type` with `data` (as recorded) says."""
        if type == "model.request" and self._time_first_request:
            self._time_first_request = False
            self.metrics.observe(FIRST_MODEL_REQUEST, max(self.clock() - self.fired_at, 0.0), routine=self.routine)
        elif type == "model.turn":
            self.metrics.count(MODEL_TURNS, routine=self.routine)
            self._usage(data)
        elif type == "context.compacted":
            self._usage(data)
        elif type == "egress.denied":  # a summary of refusals not recorded one by one counts them all
            omitted = data.get("omitted")
            amount = omitted if isinstance(omitted, int) and not isinstance(omitted, bool) and omitted > 0 else 1
            self.metrics.count(EGRESS_DENIED, amount, routine=self.routine)

    def sandbox_started(self) -> None:
        self.metrics.count(SANDBOX_STARTS, routine=self.routine)

    def sandbox_failed(self) -> None:
        self.metrics.count(SANDBOX_FAILURES, routine=self.routine)

    def _usage(self, data: JSON) -> None:
        usage = data.get("usage") or {}
        for key, kind in TOKEN_KINDS.items():
            tokens = usage.get(key)
            if isinstance(tokens, int) and tokens > 0:
                self.metrics.count(MODEL_TOKENS, tokens, routine=self.routine, kind=kind)
        cost = data.get("cost_usd")
        if isinstance(cost, int | float) and cost > 0:
            self.metrics.count(MODEL_COST, cost, routine=self.routine)
