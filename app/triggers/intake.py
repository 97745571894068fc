"""GitHub deliveries on their way in: claimed once by their GUID and once by their body, kept raw, passed on.

Keys (under `routines:`): `delivery:<guid>` the claim (value: the event name; kept 4 days, longer
than GitHub lets anyone redeliver), `delivery-body:<digest>` the claim of the body (value: the GUID
it came with; kept as long), `delivery:<guid>:payload` the raw body, LZ4-compressed (until the
worker has handled it, 3 days at most), and the stream `deliveries`, one entry per claimed delivery.
All four are ours: the web process never writes arq's keys.

Why the body too: GitHub signs only the body, so the GUID and the event name of a captured delivery
can be changed at will. A body taken in under one GUID is refused under any other, whatever event
name it comes with (a replay); GitHub's own redeliveries keep their GUID, and are duplicates.

LZ4 because payloads are the bulk of what the webhook writes: GitHub's JSON shrinks about 4.6× (a
12,470-byte `issues.labeled` to 2,700 bytes) for ~7 µs of CPU, so a burst held while workers are down
takes a fifth of Redis' memory, and each acknowledgement moves a fifth of the bytes through the socket,
Redis and its append-only file.

`DeliveryIntake.enqueue` (the web side) runs one script of ours per delivery: it stores the payload,
adds the stream entry and claims last, so a delivery is either fully taken in (the web answers 202)
or not claimed at all (503; GitHub marks it failed and the recovery sweep asks for it again).
Concurrent deliveries share one pipeline: one round trip for a batch. `DeliveryPump` (each worker
runs one) reads the stream as a consumer group and queues each delivery's `handle_delivery` job
through arq's public `enqueue_job` with the job id `delivery:<guid>`, then acknowledges and deletes
the entry; an entry a dead worker read but never acknowledged is taken over after `idle_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import os
import socket
from dataclasses import dataclass

import lz4.block
from arq.connections import ArqRedis
from redis import asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from app.core.errors import StoreError

log = logging.getLogger(__name__)

DELIVERY_JOB = "handle_delivery"
CLAIM_TTL_S = 4 * 86400
PAYLOAD_TTL_S = 3 * 86400
PREFIX = "routines:delivery:"
BODY_PREFIX = "routines:delivery-body:"
STREAM = "routines:deliveries"
GROUP = "workers"

# KEYS: claim, payload, stream, body claim. ARGV: event, claim ms, guid, payload, payload ms. 1: taken in;
# 0: GUID claimed before; 2: body claimed before by another GUID. The claims are written last: if Redis
# fails part way (out of memory), a delivery is never claimed without its payload and stream entry, and a
# body claim left without its GUID claim still lets that GUID's redelivery in. One command per delivery:
# packing and parsing a second one costs the web process more than passing the payload through Lua costs
# Redis (bench/webhook_ack.py).
_TAKE_IN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local first = redis.call('GET', KEYS[4])
if first and first ~= ARGV[3] then return 2 end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
redis.call('XADD', KEYS[3], '*', 'guid', ARGV[3])
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_CLAIM_MS, _PAYLOAD_MS = str(CLAIM_TTL_S * 1000), str(PAYLOAD_TTL_S * 1000)
_BATCH_MAX = 64  # deliveries per round trip
_BATCH_BYTES = 8 * 1024 * 1024  # payload bytes per round trip, so one call never holds Redis for long
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


def body_claim_key(digest: str) -> str:
    return BODY_PREFIX + digest


class Intake(enum.Enum):
    """What became of a delivery: taken in, or turned away without being stored."""

    QUEUED = 1
    DUPLICATE = 0  # its GUID was claimed before: a redelivery
    REPLAY = 2  # its body was claimed before under another GUID


@dataclass
class _Pending:
    guid: str
    event: str
    body: bytes
    digest: str
    future: asyncio.Future[Intake]


class DeliveryIntake:
    """Takes deliveries in for a busy web process. A round trip to Redis starts as soon as one of
    `in_flight` is free and takes every delivery read by then, so under load N concurrent deliveries
    cost one pipeline, and Redis works on one batch while this process reads the next.

    `enqueue` answers QUEUED when taken in, DUPLICATE when its GUID was claimed before, REPLAY when its
    body was (under another GUID; never run twice either way), and raises StoreError when Redis failed
    (nothing was claimed then). `digest` names the body among deliveries: the webhook passes the
    HMAC-SHA256 it has verified, which costs nothing more.
    """

    def __init__(self, redis: aioredis.Redis, in_flight: int = 2) -> None:
        self.redis = redis
        self.in_flight = in_flight
        self._pending: list[_Pending] = []
        self._calls: set[asyncio.Task[None]] = set()
        self._sha: str | None = None

    async def enqueue(self, guid: str, event: str, body: bytes, digest: str) -> Intake:
        future: asyncio.Future[Intake] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(guid, event, body, digest, future))
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
        except (RedisError, OSError) as exc:
            results = StoreError(f"could not queue the delivery: Redis failed ({type(exc).__name__}: {exc})")
        finally:  # every waiting request gets an answer, even when this task is cancelled at shutdown
            for i, item in enumerate(batch):
                if item.future.done():
                    continue
                outcome = results if isinstance(results, StoreError) else _outcome(results[i], item.guid)
                if isinstance(outcome, StoreError):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    async def _run(self, batch: list[_Pending]) -> list[int]:
        """Run the script over the batch, in one pipeline (loading the script first when Redis does not know
        it, e.g. after a restart: nothing of a batch whose script was unknown was written)."""
        for _ in range(2):
            if self._sha is None:
                self._sha = await self.redis.script_load(_TAKE_IN)
            async with self.redis.pipeline(transaction=False) as pipe:
                for item in batch:
                    claim = claim_key(item.guid)
                    keys = claim, claim + ":payload", STREAM, body_claim_key(item.digest)
                    pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *self._args(item))
                taken = await pipe.execute(raise_on_error=False)
            if any(isinstance(r, NoScriptError) for r in taken):
                self._sha = None
                continue
            failed = next((r for r in taken if isinstance(r, BaseException)), None)
            if failed is not None:
                raise StoreError(f"could not queue the delivery: Redis failed ({failed})")
            return [int(r) for r in taken]
        raise StoreError("could not queue the delivery: Redis keeps losing its script cache")

    @staticmethod
    def _args(item: _Pending) -> tuple[str | bytes, ...]:
        return item.event, _CLAIM_MS, item.guid, pack_payload(item.body), _PAYLOAD_MS


def _outcome(result: int, guid: str) -> Intake | StoreError:
    if result < 0:
        return StoreError(f"could not queue delivery {guid}: Redis did not store its payload (out of memory?)")
    return Intake(result)


async def enqueue_delivery(
    redis: aioredis.Redis, guid: str, event: str, body: bytes, digest: str | None = None
) -> Intake:
    """Take one delivery in (see DeliveryIntake.enqueue); `digest` is the body's SHA-256 unless given."""
    digest = digest or hashlib.sha256(body).hexdigest()
    return await DeliveryIntake(redis, in_flight=1).enqueue(guid, event, body, digest)


async def claimed(redis: aioredis.Redis, guids: list[str]) -> set[str]:
    """Which of `guids` this installation has claimed (received and taken in)."""
    if not guids:
        return set()
    async with redis.pipeline(transaction=False) as pipe:
        for guid in guids:
            pipe.exists(claim_key(guid))
        found = await pipe.execute()
    return {guid for guid, hit in zip(guids, found, strict=True) if hit}


class DeliveryPump:
    """Moves deliveries from the stream to arq jobs, in one worker (a consumer of the group `workers`).

    Each entry becomes `enqueue_job("handle_delivery", guid, _job_id="delivery:<guid>")` (arq refuses a
    second job of that id while the first is queued, running or has a result, and the handling itself
    fires each routine once per delivery), then is acknowledged and deleted. What another consumer read
    and did not acknowledge for `idle_ms` (its worker died) is taken over.
    """

    def __init__(
        self, pool: ArqRedis, *, consumer: str | None = None, idle_ms: int = 60_000, block_ms: int = 1000
    ) -> None:
        self.pool = pool
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.idle_ms = idle_ms
        self.block_ms = block_ms
        self._group_ready = False

    async def run(self, stop: asyncio.Event) -> None:
        """Pump until `stop` is set; a Redis failure is logged and retried a second later."""
        while not stop.is_set():
            try:
                await self.step(block=True)
            except (RedisError, OSError) as exc:
                log.warning("could not move deliveries to the queue (%s); trying again", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def drain(self) -> int:
        """Move everything the stream holds now (tests, and `routines dev` at start); how many entries."""
        moved = 0
        while count := await self.step(block=False):
            moved += count
        return moved

    async def step(self, *, block: bool) -> int:
        """Take over stale entries, read new ones, queue their jobs; how many entries were moved."""
        await self._ensure_group()
        stale = await self.pool.xautoclaim(STREAM, GROUP, self.consumer, self.idle_ms, count=64)
        entries = list(stale[1]) if stale else []
        if not entries:
            found = await self.pool.xreadgroup(
                GROUP, self.consumer, {STREAM: ">"}, count=64, block=self.block_ms if block else None
            )
            entries = [entry for _, stream_entries in found or [] for entry in stream_entries]
        for _id, fields in entries:
            guid = (fields or {}).get(b"guid", b"").decode()
            if guid:
                await self.pool.enqueue_job(DELIVERY_JOB, guid, _job_id=delivery_job_id(guid))
        if entries:
            ids = [entry_id for entry_id, _ in entries]
            async with self.pool.pipeline(transaction=False) as pipe:
                pipe.xack(STREAM, GROUP, *ids)
                pipe.xdel(STREAM, *ids)
                await pipe.execute()
        return len(entries)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.pool.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True
