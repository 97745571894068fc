"""Redis store: run records, their state machine, and each run's append-only event log (a Stream)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError, WatchError
from redis.typing import EncodableT, FieldT

from app.core.domain import JSON, Event, Run, RunState, can_transition
from app.core.errors import InvalidTransition, RunNotFound, StoreError
from app.store.metrics import LIVE_COUNTED, execute_counted, record_created, record_moved

_FOLLOW_BLOCK_MS = 1000


class RedisStore:
    """Runs as JSON strings, indexes as sorted sets, events as one Stream per run.

    Keys (under `prefix`): run:<id>, runs (all, by creation ms), runs:<routine>, events:<id>,
    token:<routine> (sha256 of the routine's API token).
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = "routines:") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def key(self, *parts: str) -> str:
        """The Redis key of `parts` under this store's prefix (`run:<id>`, `runs`, `events:<id>`, …)."""
        return self._key(*parts)

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis is unreachable ({exc}); check REDIS_URL and that the server runs") from None

    async def create_run(self, run: Run) -> None:
        score = int(run.created_at * 1000)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(self._key("run", run.id), json.dumps({**run.to_json(), LIVE_COUNTED: True}))
                pipe.zadd(self._key("runs"), {run.id: score})
                pipe.zadd(self._key("runs", run.routine), {run.id: score})
                pipe.zadd(self._key("runs-by-repo", run.repo), {run.id: score})
                pipe.zadd(self._key("runs-by-trigger", run.trigger.kind), {run.id: score})
                pipe.xadd(self._key("events", run.id), _fields(Event("run.state", {"state": run.state.value})))
                ours = len(pipe)
                record_created(pipe, self.prefix, run)
                await execute_counted(pipe, ours)
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not record run {run.id}: Redis failed ({exc})") from None

    async def get_run(self, run_id: str) -> Run:
        try:
            raw = await self.redis.get(self._key("run", run_id))
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not read run {run_id}: Redis failed ({exc})") from None
        if raw is None:
            raise RunNotFound(f"run {run_id!r} does not exist; list runs with GET /api/runs or `routines runs`")
        return Run.from_json(json.loads(raw))

    async def save_run(self, run: Run) -> None:
        """Write fields other than the state (use `transition` to change the state)."""
        await self.update(run.id, **{k: v for k, v in run.to_json().items() if k not in ("id", "state")})

    async def update(self, run_id: str, **fields: Any) -> Run:
        return await self._change(run_id, None, fields)

    async def transition(self, run_id: str, new: RunState, **fields: Any) -> Run:
        """Move a run to `new` (checked against the state machine) and record a run.state event."""
        return await self._change(run_id, new, fields)

    async def _change(
        self, run_id: str, new: RunState | None, fields: dict[str, Any], *, drop_events: bool = False
    ) -> Run:
        """Rewrite the run's record under WATCH: `fields`, and a move to `new` (checked) with its `run.state`
        event, in one transaction (a reader never sees the state without its event); `drop_events` also
        deletes its event log in the same transaction and leaves `updated_at` as it was (archiving)."""
        key = self._key("run", run_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        if raw is None:
                            raise RunNotFound(f"run {run_id!r} does not exist")
                        data: JSON = json.loads(raw)
                        current = RunState(data["state"])
                        if new is not None and new is not current and not can_transition(current, new):
                            raise InvalidTransition(f"run {run_id} cannot go from {current} to {new}")
                        data.update(fields)
                        if new is not None:
                            data["state"] = new.value
                        if not drop_events:
                            data["updated_at"] = time.time()
                        run = Run.from_json(data)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.set(key, json.dumps(data))
                        if drop_events:
                            pipe.delete(self._key("events", run_id))
                        if new is not None and new is not current:
                            moved = {"state": new.value, **({"error": run.error} if run.error and new.terminal else {})}
                            pipe.xadd(self._key("events", run_id), _fields(Event("run.state", moved)))
                        ours = len(pipe)
                        if new is not None and new is not current:
                            counted = bool(data.get(LIVE_COUNTED))
                            record_moved(pipe, self.prefix, run, current, data["updated_at"], counted)
                        await execute_counted(pipe, ours)
                        break
                    except WatchError:
                        continue
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not update run {run_id}: Redis failed ({exc})") from None
        return run

    async def list_runs(
        self, *, routine: str | None = None, state: str | None = None, limit: int = 50, before: str | None = None
    ) -> list[Run]:
        """Newest first. `before` is a run id: return runs created before it (pagination cursor)."""
        index = self._key("runs", routine) if routine else self._key("runs")
        max_score: str | float = "+inf"
        if before is not None:
            score = await self.redis.zscore(index, before)
            max_score = f"({int(score)}" if score is not None else "+inf"
        runs: list[Run] = []
        offset = 0
        batch = max(limit * 2, 50)
        while len(runs) < limit:
            ids = await self.redis.zrevrangebyscore(index, max_score, "-inf", start=offset, num=batch)
            if not ids:
                break
            offset += len(ids)
            raws = await self.redis.mget([self._key("run", i.decode()) for i in ids])
            for raw in raws:
                if raw is None:
                    continue
                run = Run.from_json(json.loads(raw))
                if state is None or run.state.value == state:
                    runs.append(run)
        return runs[:limit]

    async def page_runs(
        self,
        *,
        routine: str | None = None,
        repo: str | None = None,
        trigger: str | None = None,
        state: str | None = None,
        limit: int = 50,
        before: str | None = None,
        scan: int = 2_000,
    ) -> tuple[list[Run], str | None]:
        """Newest first, filtered; and the cursor of the next page (None: no more). One index serves the
        most specific filter (routine, then repository, then trigger kind); the others are checked on the
        records. At most `scan` runs are read per page, so a rare match costs pages, never a slow page."""
        if routine:
            index = self._key("runs", routine)
        elif repo:
            index = self._key("runs-by-repo", repo)
        elif trigger:
            index = self._key("runs-by-trigger", trigger)
        else:
            index = self._key("runs")
        high: str | float = "+inf"
        skipping = None  # runs created in the same millisecond as `before` come before or after it by id
        if before is not None:
            score = await self.redis.zscore(index, before)
            high, skipping = (int(score), before) if score is not None else ("+inf", None)
        found: list[Run] = []
        read, last = 0, None
        while len(found) < limit and read < scan:
            ids = await self.redis.zrevrangebyscore(index, high, "-inf", start=read, num=min(max(limit * 2, 50), scan))
            if not ids:
                return found, None
            read += len(ids)
            raws = await self.redis.mget([self._key("run", i.decode()) for i in ids])
            for run_id, raw in zip(ids, raws, strict=True):
                last = run_id.decode()
                if skipping is not None:
                    skipping = None if last == skipping else skipping
                    continue
                run = Run.from_json(json.loads(raw)) if raw is not None else None
                if run is None or (repo and run.repo != repo) or (trigger and run.trigger.kind != trigger):
                    continue
                if state and run.state.value != state:
                    continue
                found.append(run)
                if len(found) == limit:
                    return found, last
        return found, last

    async def runs_since(self, routine: str, since: float, *, cap: int = 1_000) -> list[Run]:
        """The routine's runs created at or after `since` (epoch seconds), newest first, at most `cap`."""
        ids = await self.redis.zrevrangebyscore(self._key("runs", routine), "+inf", int(since * 1000), start=0, num=cap)
        if not ids:
            return []
        raws = await self.redis.mget([self._key("run", i.decode()) for i in ids])
        return [Run.from_json(json.loads(raw)) for raw in raws if raw is not None]

    async def mark_archived(self, run_id: str, path: str) -> None:
        """Record that the run's events now live in the file `path`, and drop them from Redis (its record,
        indexes and timestamps stay)."""
        await self._change(run_id, None, {"archived": path}, drop_events=True)

    async def append_event(self, run_id: str, event: Event) -> str:
        try:
            event_id = await self.redis.xadd(self._key("events", run_id), _fields(event))
        except (RedisError, OSError) as exc:
            raise StoreError(f"could not append an event to run {run_id}: Redis failed ({exc})") from None
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    async def events(self, run_id: str, after: str = "0-0") -> list[Event]:
        start = "(" + after if after != "0-0" else "-"
        entries = await self.redis.xrange(self._key("events", run_id), min=start)
        return [_event(eid, fields) for eid, fields in entries]

    async def follow(self, run_id: str, after: str = "0-0") -> AsyncIterator[Event]:
        """Yield events as they are appended, until the run reaches a terminal state."""
        key = self._key("events", run_id)
        last = after
        while True:
            reply = await self.redis.xread({key: last}, block=_FOLLOW_BLOCK_MS, count=500)
            for _stream, entries in reply or []:
                for eid, fields in entries:
                    event = _event(eid, fields)
                    last = event.id
                    yield event
                    if event.type == "run.state" and RunState(event.data["state"]).terminal:
                        return
            if not reply and (await self.get_run(run_id)).state.terminal:
                return

    async def push_message(self, run_id: str, text: str) -> None:
        """Queue a message for a live run; the agent sees it at its next turn."""
        await self.redis.rpush(self._key("inbox", run_id), text)  # type: ignore[misc]
        await self.redis.expire(self._key("inbox", run_id), 7 * 86400)

    async def take_messages(self, run_id: str) -> list[str]:
        """Every queued message of the run, oldest first, removed from the queue."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(self._key("inbox", run_id), 0, -1)
            pipe.delete(self._key("inbox", run_id))
            raw, _ = await pipe.execute()
        return [m.decode() for m in raw]

    async def new_routine_token(self, routine: str, repos: Sequence[str]) -> str:
        """Create (or rotate) the routine's API token, bound to the repositories the routine names now
        (`repos`); only its hash is kept. Deleting the routine drops it (app.routines.catalog)."""
        token = f"rt_{secrets.token_urlsafe(32)}"
        await self.redis.set(self._key("token", routine), f"{_digest(token)} {_scope(repos)}")
        return token

    async def check_routine_token(self, routine: str, token: str, repos: Sequence[str]) -> bool:
        """Whether `token` is the routine's and was made while it named `repos`: a routine made again under
        the same name, or changed to other repositories, needs a new token (`routines token NAME`)."""
        stored = await self.redis.get(self._key("token", routine))
        if stored is None:
            return False
        digest, _, scope = stored.decode().partition(" ")
        return hmac.compare_digest(digest, _digest(token)) and hmac.compare_digest(scope, _scope(repos))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _scope(repos: Sequence[str]) -> str:
    """What a routine token is bound to besides the routine's name: its repositories, in any order or case."""
    return hashlib.sha256("\n".join(sorted({repo.lower() for repo in repos})).encode()).hexdigest()


def _event(eid: bytes | str, fields: dict[bytes, bytes]) -> Event:
    return Event(
        type=fields[b"type"].decode(),
        data=json.loads(fields[b"data"]),
        ts=float(fields[b"ts"]),
        id=eid.decode() if isinstance(eid, bytes) else eid,
    )


def _fields(event: Event) -> dict[FieldT, EncodableT]:
    """The Stream entry of `event` (read back by `_event`)."""
    return {"type": event.type, "ts": repr(event.ts), "data": json.dumps(event.data)}
