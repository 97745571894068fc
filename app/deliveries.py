"""GitHub deliveries: claimed once by their `X-GitHub-Delivery` GUID, kept raw, handled by the worker.

Keys (under `routines:`): `delivery:<guid>` the claim (value: the event name; kept 4 days, longer
than GitHub lets anyone redeliver), `delivery:<guid>:payload` the raw body (3 days),
`delivery:<guid>:fired` routine → run id of the runs this delivery started.

`enqueue_delivery` claims, stores and queues in one Lua call: one round trip, all or nothing,
so a delivery is either fully queued (the web answers 202) or not at all (503, GitHub marks it
failed and the recovery sweep asks for it again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arq.connections import ArqRedis
from arq.constants import default_queue_name, job_key_prefix, result_key_prefix
from redis import asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from app import queue
from app.dispatch import fire
from app.domain import Routine, Run, RunState, Trigger, new_run_id
from app.errors import StoreError
from app.followup import follow_up, follow_up_trigger
from app.matching import Match, check, github_trigger
from app.store import RedisStore
from app.tracking import Acknowledger

if TYPE_CHECKING:
    from app.services import Services

log = logging.getLogger(__name__)

DELIVERY_JOB = "handle_delivery"
CLAIM_TTL_S = 4 * 86400
PAYLOAD_TTL_S = 3 * 86400
PREFIX = "routines:delivery:"

# KEYS: claim, payload, job, result, queue. ARGV: event, claim ms, body, payload ms, job, job ms, score, job id.
_ENQUEUE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
if redis.call('EXISTS', KEYS[3], KEYS[4]) > 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[6])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[8])
return 1
"""


def delivery_job_id(guid: str) -> str:
    return f"delivery:{guid}"


def claim_key(guid: str) -> str:
    return PREFIX + guid


def _enqueue_call(guid: str, event: str, body: bytes) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the enqueue script for one delivery."""
    job_id = delivery_job_id(guid)
    now_ms = int(time.time() * 1000)
    job = queue.dumps({"t": None, "f": DELIVERY_JOB, "a": [guid], "k": {}, "et": now_ms})
    claim = claim_key(guid)
    keys = [claim, claim + ":payload", job_key_prefix + job_id, result_key_prefix + job_id, default_queue_name]
    ttl_ms = PAYLOAD_TTL_S * 1000
    return keys, [event, CLAIM_TTL_S * 1000, body, ttl_ms, job, ttl_ms, now_ms, job_id]


async def enqueue_delivery(redis: aioredis.Redis, guid: str, event: str, body: bytes) -> bool:
    """Claim `guid`, keep `body` and queue its job; False when it was claimed before (never run twice).

    Raises StoreError when Redis fails: nothing was claimed then.
    """
    keys, args = _enqueue_call(guid, event, body)
    try:
        created = await redis.register_script(_ENQUEUE)(keys=keys, args=args)
    except (RedisError, OSError) as exc:
        raise StoreError(f"could not queue delivery {guid}: Redis failed ({type(exc).__name__})") from None
    return bool(created)


class DeliveryBatcher:
    """`enqueue_delivery` for a busy web process: the calls made while a round trip is under way go
    together in the next pipeline, so N concurrent deliveries cost one round trip, not N.

    Same contract per delivery: True when queued, False when claimed before, StoreError when Redis failed.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._pending: list[tuple[list[str], list[Any], asyncio.Future[bool]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._sha: str | None = None

    async def enqueue(self, guid: str, event: str, body: bytes) -> bool:
        keys, args = _enqueue_call(guid, event, body)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, args, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the requests already read join this batch
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._run(batch)
            except (RedisError, OSError) as exc:
                error = StoreError(f"could not queue a delivery: Redis failed ({type(exc).__name__})")
                results = [error] * len(batch)
            for (_keys, _args, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(StoreError(f"could not queue a delivery: Redis failed ({result})"))
                else:
                    future.set_result(bool(result))
        self._flushing = None

    async def _run(self, batch: list[tuple[list[str], list[Any], asyncio.Future[bool]]]) -> list[Any]:
        for _ in range(2):
            if self._sha is None:
                self._sha = str(await self.redis.script_load(_ENQUEUE))
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args, _future in batch:
                    pipe.evalsha(self._sha, len(keys), *keys, *args)
                results: list[Any] = await pipe.execute(raise_on_error=False)
            if not any(isinstance(r, NoScriptError) for r in results):
                return results
            self._sha = None  # Redis restarted and lost its script cache; each call is all-or-nothing
        return results


async def claimed(redis: aioredis.Redis, guids: list[str]) -> set[str]:
    """Which of `guids` this installation has claimed (received and queued)."""
    if not guids:
        return set()
    async with redis.pipeline(transaction=False) as pipe:
        for guid in guids:
            pipe.exists(claim_key(guid))
        found = await pipe.execute()
    return {guid for guid, hit in zip(guids, found, strict=True) if hit}


@dataclass
class DeliveryDeps:
    """What handling a delivery touches; `ack` is None without a GitHub App (nothing is acknowledged)."""

    store: RedisStore
    pool: ArqRedis
    routines: Callable[[], Iterable[Routine]]
    ack: Acknowledger | None = None


async def process_delivery(deps: DeliveryDeps, guid: str) -> list[Run]:
    """Match the stored delivery against the routines, fire each match once, acknowledge on GitHub."""
    redis = deps.store.redis
    event_raw, body = await redis.mget([claim_key(guid), claim_key(guid) + ":payload"])
    if event_raw is None or body is None:
        log.warning("delivery %s: nothing stored (expired or never claimed); skipped", guid)
        return []
    event = event_raw.decode()
    payload = json.loads(body)
    routines = list(deps.routines())
    wanted = follow_up(event, payload, {r.name: r for r in routines})
    if wanted is not None:
        trigger = follow_up_trigger(github_trigger(event, payload, guid), wanted)
        run = await _fire_once(deps, guid, Match(wanted.routine, wanted.repo, ("follow-up",)), trigger)
        if deps.ack is not None:
            await deps.ack.acknowledge(trigger, [run] if run.state is not RunState.CANCELLED else [], [])
        return [run]
    matches = []
    for routine in routines:
        result = check(routine, event, payload)
        if isinstance(result, str):
            log.debug("delivery %s (%s): routine %s %s", guid, event, routine.name, result)
        else:
            matches.append(result)
    if not matches:
        log.info("delivery %s (%s.%s): no routine wants it; ignored", guid, event, payload.get("action") or "")
        return []
    trigger = github_trigger(event, payload, guid)
    runs = [await _fire_once(deps, guid, found, trigger) for found in matches]
    if deps.ack is not None:
        started = [run for run in runs if run.state is not RunState.CANCELLED]
        refused = [(run.routine, run.error or "refused") for run in runs if run.state is RunState.CANCELLED]
        await deps.ack.acknowledge(trigger, started, refused)
    return runs


async def _fire_once(deps: DeliveryDeps, guid: str, found: Match, trigger: Trigger) -> Run:
    """Fire `found` with a run id fixed per (delivery, routine) before the first try: a retried job
    (after a crash or a Redis failure) starts the same run, never a second one."""
    for note in found.notes:
        log.info("delivery %s: routine %s: %s", guid, found.routine.name, note)
    redis = deps.store.redis
    fired_key = claim_key(guid) + ":fired"
    run_id = new_run_id()
    if await redis.hsetnx(fired_key, found.routine.name, run_id):  # type: ignore[misc]
        await redis.expire(fired_key, CLAIM_TTL_S)
    else:
        run_id = (await redis.hget(fired_key, found.routine.name)).decode()  # type: ignore[misc]
    run = await fire(deps.store, deps.pool, found.routine, trigger, repo=found.repo, run_id=run_id)
    log.info("delivery %s: routine %s → run %s (%s)", guid, found.routine.name, run.id, run.state.value)
    return run


async def handle_delivery(ctx: dict[str, Any], delivery_id: str) -> list[str]:
    """The arq job `handle_delivery` (job id `delivery:<guid>`): returns the ids of the runs it started."""
    services: Services = ctx["services"]
    ack = Acknowledger(services.github, services.store, services.settings.run_url) if services.github else None
    deps = DeliveryDeps(services.store, services.pool, lambda: services.catalog.all().values(), ack)
    runs = await process_delivery(deps, delivery_id)
    return [run.id for run in runs]
