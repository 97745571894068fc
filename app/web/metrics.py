"""`GET /metrics`: the counts of every process, from Redis, in Prometheus' text format.

Every web process and worker counts what it sees into Redis (app.store.metrics), so any web process
answers with the totals of the whole installation: scrape one address (the load balancer's), not each
process. Gauges are measured at scrape time: jobs on the arq queue, deliveries not yet moved to it,
runs in each live state, and workers seen in the last minute.

Readable by anyone who can connect while ROUTINES_API_TOKEN is unset; otherwise it needs that token
as a bearer (Prometheus: `authorization: {credentials_file: …}`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from arq.constants import default_queue_name
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.core.domain import RunState
from app.core.metrics import COUNTERS, HISTOGRAMS
from app.store import metrics as stored
from app.triggers.intake import STREAM
from app.web.api import bearer_token, error, is_admin, services_of

PATH = "/metrics"
LIVE_STATES = [s.value for s in RunState if not s.terminal]


class SnapshotCollector(Collector):
    """The metric families of one Snapshot read from Redis (a collector per scrape: nothing is kept)."""

    def __init__(self, snapshot: stored.Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        for counter in COUNTERS:
            family = CounterMetricFamily(counter.name, counter.help, labels=counter.labels)
            for values, value in sorted(snap.counters.get(counter.name, {}).items()):
                family.add_metric(values, value)
            yield family
        for histogram in HISTOGRAMS:
            family_h = HistogramMetricFamily(histogram.name, histogram.help, labels=histogram.labels)
            bounds = [repr(float(b)) for b in histogram.buckets] + ["+Inf"]
            for values, observed in sorted(snap.histograms.get(histogram.name, {}).items()):
                cumulative, running = [], 0
                for bound, count in zip(bounds, observed.buckets, strict=True):
                    running += count
                    cumulative.append((bound, float(running)))
                family_h.add_metric(values, cumulative, observed.sum)
            yield family_h
        runs = GaugeMetricFamily(
            "routines_runs_live",
            "Runs in each live state now (queued, preparing, running, finishing).",
            labels=("routine", "state"),
        )
        for (routine, state), count in sorted(snap.runs.items()):
            if state in LIVE_STATES:
                runs.add_metric((routine, state), max(count, 0))
        yield runs
        queued, waiting = snap.lengths
        yield GaugeMetricFamily(
            "routines_queue_jobs", "Jobs on the arq queue (runs, schedule slots, deliveries).", value=queued
        )
        yield GaugeMetricFamily(
            "routines_deliveries_waiting",
            "GitHub deliveries taken in by the web and not yet queued by a worker.",
            value=waiting,
        )
        yield GaugeMetricFamily(
            "routines_workers_alive",
            f"Workers seen in the last {stored.ALIVE_S:.0f} seconds.",
            value=snap.workers_alive,
        )


async def metrics(request: Request) -> Response:
    services = services_of(request)
    if services.settings.api_token is not None and not is_admin(services, bearer_token(request)):
        return error(401, "this needs ROUTINES_API_TOKEN as a bearer token (Prometheus: authorization.credentials)")
    await services.metrics.flush()  # this process's own counts are in the answer
    lengths = [("zset", default_queue_name), ("stream", STREAM)]
    snapshot = await stored.read(services.store.redis, services.store.prefix, now=time.time(), lengths=lengths)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(registry), headers={"content-type": content_type})


routes = [Route(PATH, metrics)]
