"""GitHub deliveries: claimed once by their `X-GitHub-Delivery` GUID, kept raw, handled by the worker.

Keys (under `routines:`): `delivery:<guid>` the claim (value: the event name; kept 4 days, longer
than GitHub lets anyone redeliver), `delivery:<guid>:payload` the raw body, LZ4-compressed (until the
worker has handled it, 3 days at most), `delivery:<guid>:fired` routine → run id of the runs it started.

LZ4 because payloads are the bulk of what the webhook writes: GitHub's JSON shrinks about 4.6× (a
12,470-byte `issues.labeled` to 2,700 bytes) for ~7 µs of CPU, so a burst held while workers are down
takes a fifth of Redis' memory, and each acknowledgement moves a fifth of the bytes through the socket,
Redis and its append-only file (measured: +10-30% deliveries/s on one web process, bench/webhook_ack.py).

`enqueue_delivery` (and `DeliveryBatcher`, its batched form for the web) stores the payload, claims
and queues in one round trip: a plain SET of the payload, then a script that claims last, so a
delivery is either fully queued (the web answers 202) or not claimed at all (503, GitHub marks it
failed and the recovery sweep asks for it again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import hiredis
import lz4.block
from arq.connections import ArqRedis
from arq.constants import default_queue_name, job_key_prefix, result_key_prefix
from redis import asyncio as aioredis
from redis.asyncio.connection import AbstractConnection as Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.domain import JSON, Routine, Run, RunState, Trigger, new_run_id
from app.core.errors import ForgeError, RunNotFound, StoreError
from app.forge.github_app import GitHubApp
from app.store import queue
from app.store.runs import RedisStore
from app.triggers.dispatch import fire
from app.triggers.followups import follow_up, follow_up_trigger, refusal
from app.triggers.matching import WRITE_ACCESS, Match, check, event_repo, github_trigger, paths_match, pull_number
from app.triggers.tracking import Acknowledger

if TYPE_CHECKING:
    from app.services import Services

log = logging.getLogger(__name__)

DELIVERY_JOB = "handle_delivery"
CLAIM_TTL_S = 4 * 86400
PAYLOAD_TTL_S = 3 * 86400
PREFIX = "routines:delivery:"

# One round trip queues a batch of deliveries: each payload is written by a plain `SET NX` (a 12 KB value
# passed through Lua costs Redis ~1.7x a plain SET), then this script claims and queues them. KEYS[1] the
# arq queue, then per delivery: claim, payload, job, result. ARGV: claim ms, payload ms, now ms, then per
# delivery: event, job, job id. Returns per delivery 1 (queued), 0 (claimed before) or -1 (its payload is
# not stored: Redis refused the write; nothing claimed). The claim is written last: if Redis fails part
# way (out of memory), a delivery is never claimed without its job, so GitHub's redelivery still queues it.
_ENQUEUE = """
local done = {}
for i = 0, (#KEYS - 1) / 4 - 1 do
  local k, a = 2 + 4 * i, 3 + 3 * i
  if redis.call('EXISTS', KEYS[k], KEYS[k + 2], KEYS[k + 3]) > 0 then
    done[i + 1] = 0
  elseif redis.call('EXISTS', KEYS[k + 1]) == 0 then
    done[i + 1] = -1
  else
    redis.call('SET', KEYS[k + 2], ARGV[a + 2], 'PX', ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[a + 3])
    redis.call('SET', KEYS[k], ARGV[a + 1], 'PX', ARGV[1])
    done[i + 1] = 1
  end
end
return done
"""
_BATCH_MAX = 64  # deliveries per call
_BATCH_BYTES = 8 * 1024 * 1024  # payload bytes per call, so one call never holds Redis for long


_LZ4 = b"lz4:"


def pack_payload(body: bytes) -> bytes:
    """`body` as stored: `lz4:` and the LZ4 block (with its size)."""
    packed: bytes = lz4.block.compress(body)
    return _LZ4 + packed


def unpack_payload(stored: bytes) -> bytes:
    """The raw body of a stored payload (one stored uncompressed, before LZ4 was used, as it is)."""
    if stored.startswith(_LZ4):
        return bytes(lz4.block.decompress(memoryview(stored)[len(_LZ4) :]))
    return stored


def delivery_job_id(guid: str) -> str:
    return f"delivery:{guid}"


def claim_key(guid: str) -> str:
    return PREFIX + guid


@dataclass
class _Pending:
    guid: str
    event: str
    body: bytes
    future: asyncio.Future[bool] | None = None


def _enqueue_call(batch: list[_Pending]) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the enqueue script for a batch of deliveries."""
    now_ms = int(time.time() * 1000)
    keys: list[str] = [default_queue_name]
    args: list[Any] = [CLAIM_TTL_S * 1000, PAYLOAD_TTL_S * 1000, now_ms]
    for item in batch:
        job_id = delivery_job_id(item.guid)
        claim = claim_key(item.guid)
        keys += [claim, claim + ":payload", job_key_prefix + job_id, result_key_prefix + job_id]
        job = queue.dumps({"t": None, "f": DELIVERY_JOB, "a": [item.guid], "k": {}, "et": now_ms})
        args += [item.event, job, job_id]
    return keys, args


async def _run_script(connection: Connection, sha: str | None, batch: list[_Pending]) -> tuple[str, list[int]]:
    """Store the payloads of `batch` and run the enqueue script over it in one round trip on `connection`
    (loading the script when Redis does not know `sha`). Returns (sha, 1, 0 or -1 per delivery)."""
    keys, args = _enqueue_call(batch)
    ttl_ms = PAYLOAD_TTL_S * 1000
    writes = [("SET", claim_key(item.guid) + ":payload", pack_payload(item.body), "NX", "PX", ttl_ms) for item in batch]
    for _ in range(2):
        if sha is None:
            (loaded,) = await _round_trip(connection, [("SCRIPT", "LOAD", _ENQUEUE)])
            sha = str(loaded, "ascii")
        *_stored, results = await _round_trip(connection, [*writes, ("EVALSHA", sha, len(keys), *keys, *args)])
        if isinstance(results, NoScriptError):
            sha = None  # Redis restarted and lost its script cache; nothing was claimed
            continue
        if isinstance(results, BaseException):
            raise results
        return sha, [int(r) for r in results]
    raise StoreError("Redis keeps losing its script cache")


async def _round_trip(connection: Connection, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send `commands` and read their replies, a ResponseError in place of an error reply. Packed by
    hiredis: redis-py packs in Python, which on a batch of 12 KB payloads was a sixth of an ack's CPU.
    Any other failure drops the connection (redis-py does), so no reply is left for the next caller."""
    try:
        await connection.send_packed_command(b"".join(map(hiredis.pack_command, commands)), check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        await connection.disconnect(nowait=True)
        raise


def _outcome(result: int, guid: str) -> bool | StoreError:
    if result < 0:
        return StoreError(f"could not queue delivery {guid}: Redis did not store its payload (out of memory?)")
    return result == 1


async def enqueue_delivery(redis: aioredis.Redis, guid: str, event: str, body: bytes) -> bool:
    """Claim `guid`, keep `body` and queue its job; False when it was claimed before (never run twice).

    Raises StoreError when Redis fails: nothing was claimed then.
    """
    pool = redis.connection_pool
    try:
        connection = await pool.get_connection()
        try:
            _sha, (result,) = await _run_script(connection, None, [_Pending(guid, event, body)])
        finally:
            await pool.release(connection)
    except (RedisError, OSError) as exc:
        raise StoreError(f"could not queue delivery {guid}: Redis failed ({type(exc).__name__})") from None
    outcome = _outcome(result, guid)
    if isinstance(outcome, StoreError):
        raise outcome
    return outcome


class DeliveryBatcher:
    """`enqueue_delivery` for a busy web process. A call to Redis starts as soon as one of `in_flight`
    is free and takes every delivery read by then, so under load N concurrent deliveries cost one round
    trip and one script run, and Redis works on one batch while this process reads the next. Calls use
    their own connections, kept open: the pool's per-checkout health probe costs a turn of the loop.

    Same contract per delivery: True when queued, False when claimed before, StoreError when Redis failed.
    """

    def __init__(self, redis: aioredis.Redis, in_flight: int = 2) -> None:
        self.redis = redis
        self.in_flight = in_flight
        self._pending: list[_Pending] = []
        self._calls: set[asyncio.Task[None]] = set()
        self._idle: list[Connection] = []
        self._sha: str | None = None

    async def enqueue(self, guid: str, event: str, body: bytes) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(guid, event, body, future))
        if len(self._calls) < self.in_flight:
            self._start()
        return await future

    def _start(self) -> None:
        call = asyncio.create_task(self._call())
        self._calls.add(call)
        call.add_done_callback(self._done)

    def _done(self, call: asyncio.Task[None]) -> None:
        self._calls.discard(call)
        if self._pending and len(self._calls) < self.in_flight:
            self._start()

    def _take(self) -> list[_Pending]:
        size = count = 0
        for item in self._pending:
            if count and (count == _BATCH_MAX or size + len(item.body) > _BATCH_BYTES):
                break
            size, count = size + len(item.body), count + 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        return batch

    async def _call(self) -> None:
        batch = self._take()  # when the task runs: what arrived since it was started joins
        if not batch:
            return
        results: list[int] | StoreError = StoreError("could not queue the delivery: the call to Redis ended early")
        try:
            results = await self._run(batch)
        finally:  # every waiting request gets an answer, even when this task is cancelled at shutdown
            for i, item in enumerate(batch):
                assert item.future is not None
                if item.future.done():
                    continue
                outcome = results if isinstance(results, StoreError) else _outcome(results[i], item.guid)
                if isinstance(outcome, StoreError):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    async def _run(self, batch: list[_Pending]) -> list[int] | StoreError:
        """The batch's results; a connection kept open across a Redis restart is replaced once."""
        for attempt in (1, 2):
            reused = bool(self._idle)
            connection: Connection = self._idle.pop() if reused else self._connect()
            try:
                self._sha, results = await _run_script(connection, self._sha, batch)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                await connection.disconnect(nowait=True)
                if reused and attempt == 1:
                    continue  # if the script did run, the retry finds the claims and answers "duplicate"
                return StoreError(f"could not queue the delivery: Redis failed ({type(exc).__name__}: {exc})")
            except (RedisError, StoreError) as exc:
                await connection.disconnect(nowait=True)
                reason = exc if isinstance(exc, StoreError) else f"Redis failed ({type(exc).__name__}: {exc})"
                return StoreError(f"could not queue the delivery: {reason}")
            self._idle.append(connection)
            return results
        raise AssertionError("unreachable")

    def _connect(self) -> Connection:
        connection: Connection = self.redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        return connection

    async def close(self) -> None:
        """Close the batcher's own connections (the web app's lifespan does at shutdown)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()


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
    changed_files: Callable[[str, JSON], Awaitable[list[str]]] | None = None  # (event, payload) → file names
    permission: Callable[[str, str, JSON], Awaitable[str]] | None = None  # (repo, login, payload) → admin/write/…


async def process_delivery(deps: DeliveryDeps, guid: str) -> list[Run]:
    """Match the stored delivery against the routines, fire each match once, acknowledge on GitHub, then
    drop the raw payload (the runs keep what they need; the claim stays, so a redelivery is still refused).
    A failure before the end keeps it, so the retried job finds it."""
    runs = await _process(deps, guid)
    await deps.store.redis.delete(claim_key(guid) + ":payload")
    return runs


async def _process(deps: DeliveryDeps, guid: str) -> list[Run]:
    redis = deps.store.redis
    event_raw, body = await redis.mget([claim_key(guid), claim_key(guid) + ":payload"])
    if event_raw is None or body is None:
        log.warning("delivery %s: nothing stored (expired or never claimed); skipped", guid)
        return []
    event = event_raw.decode()
    payload = json.loads(unpack_payload(body))
    routines = list(deps.routines())
    wanted = follow_up(event, payload, {r.name: r for r in routines})
    if wanted is not None:
        why = refusal(wanted, await _run_or_none(deps.store, wanted.parent_run))
        login = str((payload.get("sender") or {}).get("login") or "")
        level = await _permission(deps, wanted.repo, login, payload) if why is None else ""
        if why is None and level not in WRITE_ACCESS:
            why = f"{login!r} has {level} access to {wanted.repo}, not write"
        if why is not None:
            log.warning("delivery %s (%s): follow-up of %s refused: %s", guid, event, wanted.branch, why)
            return []
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
    matches = await _apply_paths(deps, guid, event, payload, matches)
    matches = await _apply_actors(deps, guid, payload, matches)
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


async def _run_or_none(store: RedisStore, run_id: str) -> Run | None:
    try:
        return await store.get_run(run_id)
    except RunNotFound:
        return None


async def _apply_paths(deps: DeliveryDeps, guid: str, event: str, payload: JSON, matches: list[Match]) -> list[Match]:
    """Apply the `paths` filters a pull request's payload cannot answer to the files GitHub lists for it
    (listed once per delivery). If they cannot be listed, the routine fires with a note: a missed run is
    worse than an extra one, and the note says the filter was not applied."""
    if not any(m.paths for m in matches):
        return matches
    files: list[str] | str
    if deps.changed_files is None:
        files = "no GitHub App to list the pull request's files"
    else:
        try:
            files = await deps.changed_files(event, payload)
        except ForgeError as exc:
            files = str(exc)
    kept = []
    for found in matches:
        if not found.paths:
            kept.append(found)
        elif isinstance(files, str):
            kept.append(replace(found, paths=(), notes=(*found.notes, f"paths filter not applied: {files}")))
        elif paths_match(found.paths, files):
            kept.append(replace(found, paths=()))
        else:
            log.info("delivery %s: routine %s: no changed file matches paths", guid, found.routine.name)
    return kept


async def _apply_actors(deps: DeliveryDeps, guid: str, payload: JSON, matches: list[Match]) -> list[Match]:
    """Keep the CI-event matches whose actor GitHub says has write access to the repository (asked once
    per actor and repository). Without a GitHub App, or when GitHub cannot say, nothing fires: a run
    an untrusted actor caused is worse than a missed one, and the log says why."""
    known: dict[tuple[str, str], str] = {}
    kept = []
    for found in matches:
        if found.actor is None:
            kept.append(found)
            continue
        key = (found.repo, found.actor)
        if key not in known:
            known[key] = await _permission(deps, found.repo, found.actor, payload)
        if known[key] in found.access:
            kept.append(replace(found, actor=None))
        else:
            log.warning(
                "delivery %s: routine %s not fired: %r has %s access to %s, too little (name them in authors to allow)",
                guid,
                found.routine.name,
                found.actor,
                known[key],
                found.repo,
            )
    return kept


async def _permission(deps: DeliveryDeps, repo: str, login: str, payload: JSON) -> str:
    if not login:
        return "no known"
    if deps.permission is None:
        return "unknown (no GitHub App to ask)"
    try:
        return await deps.permission(repo, login, payload)
    except ForgeError as exc:
        return f"unknown ({exc})"


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
    await services.refresh_routines()
    github = services.github
    ack = Acknowledger(github, services.store, services.settings.run_url) if github else None
    deps = DeliveryDeps(services.store, services.pool, lambda: services.catalog.all().values(), ack)
    if github is not None:
        app = GitHubApp(github)

        async def changed_files(event: str, payload: JSON) -> list[str]:
            repo, number = event_repo(payload), pull_number(event, payload)
            installation = (payload.get("installation") or {}).get("id")
            if repo is None or number is None or not isinstance(installation, int):
                raise ForgeError("the event names no repository, pull request and installation")
            token = await app.token(installation, repo, {"pull_requests": "read"})
            return await app.pull_files(repo, number, token)

        async def permission(repo: str, login: str, payload: JSON) -> str:
            installation = (payload.get("installation") or {}).get("id")
            if not isinstance(installation, int):
                raise ForgeError("the event names no installation")
            return await app.permission(repo, login, await app.token(installation, repo, {"metadata": "read"}))

        deps.changed_files = changed_files
        deps.permission = permission
    runs = await process_delivery(deps, delivery_id)
    return [run.id for run in runs]
