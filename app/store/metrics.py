"""Metrics kept in Redis: each process adds its counts to a few hashes; any web process reads the totals.

Keys (under the prefix, `routines:`):
- `metrics:counters` — hash: `["<name>",[label values]]` → the count (HINCRBY; HINCRBYFLOAT for dollars)
- `metrics:histograms` — hash: `["<name>",[label values],"<le>"]` → the observations in that bucket alone
  (one HINCRBY per observation; the renderer makes them cumulative), and `…,"sum"]` → their sum
- `metrics:runs` — hash: `["<routine>","<state>"]` → runs in that live state now
- `metrics:workers` — sorted set: worker id → when it last reported (its heartbeat)

Counts come in three ways:
- `RedisMetrics` (the Metrics port) adds counts up in the process and sends them every `flush_s` in one
  transaction. The webhook's hot path pays a dict update, never a round trip; counts made while Redis
  is down (the webhook's 503s) stay pending and are sent once it is back.
- `record_created` and `record_moved` put a run's counts in the very transaction that records or moves
  the run (app.store.runs), so each is counted exactly once, with no round trip of its own.
- `count_now` sends one count at once, for rare events seen where no RedisMetrics is at hand (a refused fire).

A Redis error while counting is logged at debug level and never fails what was counted.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from app.core.domain import Run, RunState
from app.core.metrics import (
    COUNTERS,
    HISTOGRAMS,
    RUN_DURATION,
    RUNS_ENDED,
    RUNS_FIRED,
    RUNS_STARTED,
    Counter,
    Histogram,
)

log = logging.getLogger(__name__)

COUNTERS_KEY = "metrics:counters"
HISTOGRAMS_KEY = "metrics:histograms"
RUNS_KEY = "metrics:runs"
LIVE_COUNTED = "live_counted"
"""Set in the record of a run whose live state is counted in `metrics:runs` (runs recorded before
metrics existed are not, so their moves must not be)."""
WORKERS_KEY = "metrics:workers"
WORKER_INFO_KEY = "workers"  # hash: worker id → {id, host, pid, jobs, started}, for the console
ALIVE_S = 60.0
BEAT_S = 10.0
_FORGET_WORKER_S = 3600.0

Number = int | float


def _field(*parts: object) -> str:
    return json.dumps(parts, separators=(",", ":"))


def _values(metric: Counter | Histogram, labels: dict[str, str]) -> list[str] | None:
    """The label values in the metric's order; None (logged) when the labels are not the metric's."""
    if labels.keys() != set(metric.labels):
        log.error(
            "metric %s counted with labels %s; it takes %s (not counted)", metric.name, sorted(labels), metric.labels
        )
        return None
    return [str(labels[name]) for name in metric.labels]


def _observation(metric: Histogram, values: list[str], value: float) -> tuple[str, str]:
    """The fields of the bucket `value` falls in (`le` the smallest bound ≥ value) and of the sum."""
    index = bisect.bisect_left(metric.buckets, value)
    le = repr(float(metric.buckets[index])) if index < len(metric.buckets) else "+Inf"
    return _field(metric.name, values, le), _field(metric.name, values, "sum")


def _incr(pipe: Pipeline, key: str, field: str, amount: Number) -> None:
    if isinstance(amount, int):
        pipe.hincrby(key, field, amount)
    else:
        pipe.hincrbyfloat(key, field, amount)


class RedisMetrics:
    """The Metrics of one process: counts are added up here and sent by `flush` (every `flush_s` once
    `start`ed, and at `close`). `count` and `observe` may be called from any thread."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str = "routines:",
        *,
        flush_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.flush_s = flush_s
        self.clock = clock
        self._pending: dict[tuple[str, str], Number] = {}
        self._fields: dict[tuple[str, tuple[tuple[str, str], ...]], str | None] = {}  # as few as label values
        self._lock = threading.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._worker: str | None = None
        self._beat_at = -math.inf

    def count(self, metric: Counter, amount: float = 1, **labels: str) -> None:
        known = (metric.name, tuple(labels.items()))
        field_ = self._fields.get(known, "")
        if field_ == "":  # JSON-encoding the field each time would cost the webhook ~2 µs a delivery
            values = _values(metric, labels)
            field_ = self._fields[known] = None if values is None else _field(metric.name, values)
        if field_ is not None:
            self._add({field_: int(amount) if metric.whole else float(amount)}, COUNTERS_KEY)

    def observe(self, metric: Histogram, value: float, **labels: str) -> None:
        values = _values(metric, labels)
        if values is not None:
            bucket, total = _observation(metric, values, value)
            self._add({bucket: 1, total: float(value)}, HISTOGRAMS_KEY)

    def beat_as(self, worker_id: str) -> None:
        """Send a heartbeat of the worker `worker_id` with the counts (at least every BEAT_S seconds), and
        remove it at `close`: `GET /metrics` counts the workers seen in the last minute."""
        self._worker = worker_id

    def start(self) -> None:
        """Flush every `flush_s` in the background until `close` (call it on the loop that will close it)."""
        if self._task is None:
            self._task = asyncio.create_task(self._flush_forever(), name="metrics-flush")

    async def close(self) -> None:
        """Stop flushing in the background, send what is pending, and drop the heartbeat."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()
        if self._worker is not None:
            try:
                await self.redis.zrem(self.prefix + WORKERS_KEY, self._worker)
            except (RedisError, OSError) as exc:
                log.debug("could not remove the heartbeat of %s: Redis failed (%s)", self._worker, exc)

    async def flush(self) -> bool:
        """Send the counts made since the last flush (and the heartbeat when due) in one transaction; True
        when all were sent. Those Redis refused stay pending for the next flush (logged at debug level)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        now = self.clock()
        beat = self._worker is not None and now - self._beat_at >= BEAT_S
        if not pending and not beat:
            return True
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for (key, field_), amount in pending.items():
                    _incr(pipe, self.prefix + key, field_, amount)
                if beat:
                    pipe.zadd(self.prefix + WORKERS_KEY, {self._worker or "": now})
                    pipe.zremrangebyscore(self.prefix + WORKERS_KEY, "-inf", now - _FORGET_WORKER_S)
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            log.debug("metrics kept for the next flush: Redis failed (%s)", exc)
            self._restore(pending)
            return False
        refused = {
            key: amount for (key, amount), r in zip(pending.items(), results, strict=False) if isinstance(r, Exception)
        }
        if refused:
            log.debug("metrics kept for the next flush: Redis refused %d increments (%s)", len(refused), results)
            self._restore(refused)
        if beat and not any(isinstance(r, Exception) for r in results[len(pending) :]):
            self._beat_at = now
        return not refused

    def _add(self, fields: dict[str, Number], key: str) -> None:
        with self._lock:
            for field_, amount in fields.items():
                self._pending[(key, field_)] = self._pending.get((key, field_), 0) + amount

    def _restore(self, counts: dict[tuple[str, str], Number]) -> None:
        with self._lock:
            for slot, amount in counts.items():
                self._pending[slot] = self._pending.get(slot, 0) + amount

    async def _flush_forever(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.flush_s)
            try:
                await self.flush()
            except Exception:  # a bug here must not stop the counting for good
                log.exception("sending metrics failed")


def record_created(pipe: Pipeline, prefix: str, run: Run) -> None:
    """Count, in the transaction that records `run`, its fire and its state."""
    _incr(pipe, prefix + COUNTERS_KEY, _field(RUNS_FIRED.name, [run.routine, run.trigger.kind]), 1)
    if not run.state.terminal:
        _incr(pipe, prefix + RUNS_KEY, _field(run.routine, run.state.value), 1)


def record_moved(pipe: Pipeline, prefix: str, run: Run, old: RunState, now: float, live_counted: bool) -> None:
    """Count, in the transaction that moves `run` from `old` to its state, the move: a start (queued →
    preparing), an end and its duration (fire to end), and, if `live_counted`, the live-state gauge."""
    new, routine = run.state, run.routine
    if live_counted and not old.terminal:
        _incr(pipe, prefix + RUNS_KEY, _field(routine, old.value), -1)
    if live_counted and not new.terminal:
        _incr(pipe, prefix + RUNS_KEY, _field(routine, new.value), 1)
    if old is RunState.QUEUED and new is RunState.PREPARING:
        _incr(pipe, prefix + COUNTERS_KEY, _field(RUNS_STARTED.name, [routine]), 1)
    if new.terminal:
        _incr(pipe, prefix + COUNTERS_KEY, _field(RUNS_ENDED.name, [routine, new.value]), 1)
        bucket, total = _observation(RUN_DURATION, [routine, new.value], max(now - run.created_at, 0.0))
        _incr(pipe, prefix + HISTOGRAMS_KEY, bucket, 1)
        _incr(pipe, prefix + HISTOGRAMS_KEY, total, max(now - run.created_at, 0.0))


async def execute_counted(pipe: Pipeline, ours: int) -> list[Any]:
    """Execute `pipe`, whose first `ours` commands are the caller's and the rest metric increments: an
    error of the caller's commands is raised, an error of the increments only logged (debug level)."""
    results: list[Any] = await pipe.execute(raise_on_error=False)
    for result in results[:ours]:
        if isinstance(result, Exception):
            raise result
    errors = [r for r in results[ours:] if isinstance(r, Exception)]
    if errors:
        log.debug("metrics not counted: Redis refused %d increments (%s)", len(errors), errors[0])
    return results


async def count_now(redis: aioredis.Redis, prefix: str, metric: Counter, amount: float = 1, **labels: str) -> None:
    """Count a rare event at once, where no RedisMetrics is at hand; a Redis error is logged and swallowed."""
    values = _values(metric, labels)
    if values is None:
        return
    key, field_ = prefix + COUNTERS_KEY, _field(metric.name, values)
    try:
        if metric.whole:
            await redis.hincrby(key, field_, int(amount))  # type: ignore[misc]
        else:
            await redis.hincrbyfloat(key, field_, float(amount))  # type: ignore[misc]
    except (RedisError, OSError) as exc:
        log.debug("%s not counted: Redis failed (%s)", metric.name, exc)


@dataclass
class Observed:
    """One histogram's series: observations per bucket (not cumulative; the last is +Inf) and their sum."""

    buckets: list[int]
    sum: float = 0.0


@dataclass
class Snapshot:
    """Every count in Redis, decoded: metric name → label values → value (only metrics of app.core.metrics)."""

    counters: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    histograms: dict[str, dict[tuple[str, ...], Observed]] = field(default_factory=dict)
    runs: dict[tuple[str, str], int] = field(default_factory=dict)
    workers_alive: int = 0
    lengths: list[int] = field(default_factory=list)


async def read(redis: aioredis.Redis, prefix: str, *, now: float, lengths: Sequence[tuple[str, str]] = ()) -> Snapshot:
    """All metrics in one round trip; `lengths` are (type, key) pairs also measured (`zset` or `stream`)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(prefix + COUNTERS_KEY)
        pipe.hgetall(prefix + HISTOGRAMS_KEY)
        pipe.hgetall(prefix + RUNS_KEY)
        pipe.zcount(prefix + WORKERS_KEY, now - ALIVE_S, "+inf")
        for kind, key in lengths:
            pipe.zcard(key) if kind == "zset" else pipe.xlen(key)
        counters, histograms, runs, alive, *sizes = await pipe.execute()
    snapshot = Snapshot(workers_alive=int(alive), lengths=[int(n) for n in sizes])
    _decode_counters(snapshot, counters)
    _decode_histograms(snapshot, histograms)
    for raw, value in runs.items():
        routine, state = json.loads(raw)
        snapshot.runs[(routine, state)] = int(value)
    return snapshot


def _decode_counters(snapshot: Snapshot, raw: dict[bytes, bytes]) -> None:
    known = {c.name: len(c.labels) for c in COUNTERS}
    for key, value in raw.items():
        name, values = json.loads(key)
        if known.get(name) == len(values):
            snapshot.counters.setdefault(name, {})[tuple(values)] = float(value)


def _decode_histograms(snapshot: Snapshot, raw: dict[bytes, bytes]) -> None:
    known = {h.name: h for h in HISTOGRAMS}
    for key, value in raw.items():
        name, values, le = json.loads(key)
        metric = known.get(name)
        if metric is None or len(values) != len(metric.labels):
            continue
        series = snapshot.histograms.setdefault(name, {})
        observed = series.setdefault(tuple(values), Observed([0] * (len(metric.buckets) + 1)))
        if le == "sum":
            observed.sum += float(value)
        else:  # a bound no longer in the table (changed buckets) counts in the next one up
            observed.buckets[bisect.bisect_left(metric.buckets, float(le))] += int(value)
