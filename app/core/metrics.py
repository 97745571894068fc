"""What Routines counts for `GET /metrics`: every counter and histogram, its labels and its buckets.

The processes that see something happen count it (app.core.ports.Metrics); the counts add up in Redis
(app.store.metrics), so any web process renders the totals of all of them (app.web.metrics). Labels
take values from small sets only — routine names, run states, outcomes, token kinds — never a run
id, a repository or a user.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Counter:
    """A counter named `name` (rendered with `_total`); `whole` counters only ever add integers."""

    name: str
    help: str
    labels: tuple[str, ...]
    whole: bool = True


@dataclass(frozen=True)
class Histogram:
    """A histogram with fixed bucket upper bounds (`+Inf` is implied)."""

    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]


RUNS_FIRED = Counter(
    "routines_runs_fired",
    "Runs recorded by a fire (API, schedule, GitHub event, CLI), refused ones included.",
    ("routine", "trigger"),
)
RUNS_STARTED = Counter("routines_runs_started", "Runs a worker took off the queue and began preparing.", ("routine",))
RUNS_ENDED = Counter("routines_runs_ended", "Runs that reached a terminal state.", ("routine", "state"))
RUNS_REFUSED = Counter(
    "routines_runs_refused",
    "Fires refused before they ran: routine paused or archived, or a daily quota used up (limit).",
    ("routine", "limit"),
)
RUN_DURATION = Histogram(
    "routines_run_duration_seconds",
    "Seconds from a run's fire to its end, by the state it ended in.",
    ("routine", "state"),
    (1, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 10800),
)
FIRST_MODEL_REQUEST = Histogram(
    "routines_run_first_model_request_seconds",
    "Seconds from a run's fire to its first model request (queue wait, checkout and sandbox start).",
    ("routine",),
    (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
WEBHOOK_DELIVERIES = Counter(
    "routines_webhook_deliveries",
    "GitHub deliveries answered, by outcome: queued, duplicate, ignored, pong, bad_signature, bad_request, "
    "too_large, unavailable (503, Redis down), error.",
    ("outcome",),
)
MODEL_TURNS = Counter("routines_model_turns", "Model responses of runs' conversations.", ("routine",))
MODEL_TOKENS = Counter(
    "routines_model_tokens",
    "Model tokens of runs (compaction summaries included), by kind: input, output, cache_creation_input, "
    "cache_read_input.",
    ("routine", "kind"),
)
MODEL_COST = Counter(
    "routines_model_cost_usd",
    "What runs' model usage cost, in US dollars (the price table).",
    ("routine",),
    whole=False,
)
EGRESS_DENIED = Counter(
    "routines_egress_denied", "Requests from runs' sandboxes that the egress proxy refused.", ("routine",)
)
SANDBOX_STARTS = Counter("routines_sandbox_starts", "Sandboxes started for runs (the agent's hands up).", ("routine",))
SANDBOX_FAILURES = Counter(
    "routines_sandbox_failures", "Sandboxes that failed to start (boundary, egress proxy or hands).", ("routine",)
)

COUNTERS = (
    RUNS_FIRED,
    RUNS_STARTED,
    RUNS_ENDED,
    RUNS_REFUSED,
    WEBHOOK_DELIVERIES,
    MODEL_TURNS,
    MODEL_TOKENS,
    MODEL_COST,
    EGRESS_DENIED,
    SANDBOX_STARTS,
    SANDBOX_FAILURES,
)
HISTOGRAMS = (RUN_DURATION, FIRST_MODEL_REQUEST)


class NoMetrics:
    """Metrics that count nothing: for runs and tools outside a service (`RunnerDeps` default)."""

    def count(self, metric: Counter, amount: float = 1, **labels: str) -> None:
        return None

    def observe(self, metric: Histogram, value: float, **labels: str) -> None:
        return None
