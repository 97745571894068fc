"""The job queue (arq): JSON-serialised jobs with deterministic ids, so a run is enqueued once."""

from __future__ import annotations

from typing import Any

import msgspec
from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import ConnectionPool

RUN_JOB = "run_routine"


def dumps(data: Any) -> bytes:
    """arq pickles by default, letting whoever writes to Redis run code in the worker; we use JSON
    (msgspec's encoder: a webhook queues a job per delivery, and the stdlib's costs ~9% of an ack).
    A failed job's result is the exception it ended with: kept as its type and message."""
    return msgspec.json.encode(data, enc_hook=_exception_text)


def _exception_text(value: Any) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    raise TypeError(f"a job cannot hold a {type(value).__name__}: only JSON values")


def loads(raw: bytes) -> Any:
    return msgspec.json.decode(raw)


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_retries = 1
    settings.conn_timeout = 2
    return settings


def run_job_id(run_id: str) -> str:
    return f"run:{run_id}"


def resume_job_id(run_id: str, attempt: int) -> str:
    """The job the reaper enqueues to resume a run whose worker was lost (its `attempt`th resume)."""
    return f"{run_job_id(run_id)}:resume:{attempt}"


def run_of_job(job_id: str) -> str | None:
    """The run a run's job (`run:<id>`, or `run:<id>:resume:<n>` from the reaper) is for; None for other jobs."""
    kind, _, rest = job_id.partition(":")
    return rest.partition(":")[0] or None if kind == "run" else None


def connect(url: str) -> ArqRedis:
    """One client for the queue and the store. Connects lazily: a web process starts while Redis is down
    and answers 503 until it is back."""
    pool = ConnectionPool.from_url(url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30)
    return ArqRedis(pool, job_serializer=dumps, job_deserializer=loads)


async def enqueue_run(pool: ArqRedis, run_id: str) -> bool:
    """Queue the run job; False when a job with this run's id already exists (never twice)."""
    job = await pool.enqueue_job(RUN_JOB, run_id, _job_id=run_job_id(run_id))
    return job is not None
