"""The recent GitHub deliveries and what became of each, for the console: a capped Redis stream.

An entry is one delivery as the worker handled it (`event`, `action`, `repo`, `sender`, the routines it
`fired` with their run ids, and for every other routine `why` it did not fire), or as the web process
turned it away (`outcome` `duplicate` or `ignored`). Only the newest `MAX_ENTRIES` are kept.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from redis import asyncio as aioredis

from app.core.domain import JSON
from app.store.failures import redis_failure

MAX_ENTRIES = 2_000


@dataclass
class DeliveryRecord:
    guid: str
    event: str
    outcome: str  # fired, no match, duplicate, ignored, refused
    action: str = ""
    repo: str = ""
    sender: str = ""
    fired: dict[str, str] = field(default_factory=dict)  # routine → run id
    why: dict[str, str] = field(default_factory=dict)  # routine → why it did not fire
    ts: float = field(default_factory=time.time)

    def to_json(self) -> JSON:
        return {
            "guid": self.guid,
            "event": self.event,
            "action": self.action,
            "repo": self.repo,
            "sender": self.sender,
            "outcome": self.outcome,
            "fired": self.fired,
            "why": self.why,
            "ts": self.ts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeliveryRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class DeliveryLog:
    def __init__(self, redis: aioredis.Redis, prefix: str = "routines:") -> None:
        self.redis = redis
        self.key = prefix + "delivery-log"

    async def record(self, entry: DeliveryRecord) -> None:
        with redis_failure(f"record delivery {entry.guid}"):
            await self.redis.xadd(self.key, {"entry": json.dumps(entry.to_json())}, maxlen=MAX_ENTRIES)

    async def recent(self, limit: int = 100, *, before: str | None = None) -> list[tuple[str, DeliveryRecord]]:
        """Newest first, as (stream id, record); `before` is a stream id to page from."""
        high = f"({before}" if before else "+"
        with redis_failure("read the delivery log"):
            entries = await self.redis.xrevrange(self.key, max=high, min="-", count=limit)
        found = []
        for entry_id, fields in entries:
            raw = fields.get(b"entry") or fields.get("entry")
            if raw is None:
                continue
            key = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            found.append((key, DeliveryRecord.from_json(json.loads(raw))))
        return found
