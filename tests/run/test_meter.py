"""What a run counts for `GET /metrics`, read off its events."""

from __future__ import annotations

from typing import Any

from app.core.domain import Run, Trigger
from app.core.metrics import EGRESS_DENIED, Counter, Histogram
from app.run.meter import RunMeter


class Counted:
    def __init__(self) -> None:
        self.counts: list[tuple[str, float, dict[str, str]]] = []

    def count(self, metric: Counter, amount: float = 1, **labels: str) -> None:
        self.counts.append((metric.name, amount, labels))

    def observe(self, metric: Histogram, value: float, **labels: str) -> None:
        pass


def test_a_summary_of_refusals_counts_every_refusal_it_stands_for() -> None:
    """The egress proxy records the first refusals one by one and only counts the rest (a flood): the
    metric still counts each refusal."""
    metrics = Counted()
    meter = RunMeter(metrics, Run(id="r1", routine="fix", repo="acme/app", trigger=Trigger("api")))
    meter.saw("egress.denied", {"host": "exfil.example.com", "port": 443, "reason": "not allowed"})
    meter.saw("egress.denied", {"host": "*", "port": 0, "reason": "349 more refusals ...", "omitted": 349})
    bad: dict[str, Any] = {"host": "*", "port": 0, "omitted": True}
    meter.saw("egress.denied", bad)
    denied = [amount for name, amount, _ in metrics.counts if name == EGRESS_DENIED.name]
    assert denied == [1, 349, 1]
