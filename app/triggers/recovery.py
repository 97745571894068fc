"""The delivery recovery sweep: GitHub never redelivers on its own, so we ask.

Each sweep pages through the App's recent deliveries (`GET /app/hook/deliveries`, newest first,
back to `window_s`), groups the attempts by GUID, and asks for a redelivery of every GUID that
has no 2xx attempt and that we never claimed (`POST /app/hook/deliveries/{id}/attempts`). With
the claim (SET NX on the GUID) a redelivery can never start a second run, so an outage of the
web process or of Redis loses no event: the webhook answered 503 or nothing, and the sweep
brings it back once both are up.

A request is remembered under `routines:redeliver:<guid>`: asked again at most every
`retry_after_s`, at most `max_attempts` times; give-ups are logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from redis import asyncio as aioredis

from app.core.domain import JSON
from app.core.errors import ForgeError
from app.forge.github_app import GitHubApp
from app.triggers.intake import claimed

log = logging.getLogger(__name__)

REQUEST_PREFIX = "routines:redeliver:"
# KEYS: last request time, request count; ARGV: now, retry_after_s, ttl → 0 (asked too recently) or the attempt
_ASK = """
local last = redis.call('GET', KEYS[1])
if last and tonumber(ARGV[1]) - tonumber(last) < tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
local n = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return n
"""


@dataclass(frozen=True)
class SweepPolicy:
    window_s: float = 24 * 3600  # GitHub keeps deliveries 3 days; older ones cannot be redelivered anyway
    retry_after_s: int = 600
    max_attempts: int = 5
    max_pages: int = 30
    per_page: int = 100
    max_requests: int = 300  # per sweep, to stay well inside GitHub's rate limits


@dataclass
class SweepReport:
    scanned: int = 0
    failed: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)


def _when(item: JSON) -> float:
    try:
        return datetime.fromisoformat(str(item.get("delivered_at")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


async def failed_deliveries(app: GitHubApp, policy: SweepPolicy, now: float) -> tuple[int, dict[str, JSON]]:
    """How many attempts were read, and GUID → latest attempt for GUIDs with no 2xx attempt in the window."""
    succeeded: set[str] = set()
    latest: dict[str, JSON] = {}
    scanned = 0
    cursor: str | None = None
    for _ in range(policy.max_pages):
        items, cursor = await app.list_deliveries(cursor, policy.per_page)
        for item in items:
            if _when(item) < now - policy.window_s:
                cursor = None
                break
            scanned += 1
            guid = str(item.get("guid") or "")
            if 200 <= int(item.get("status_code") or 0) < 300:
                succeeded.add(guid)
            elif guid and item.get("event") != "ping":
                latest.setdefault(guid, item)
        if cursor is None:
            break
    return scanned, {guid: item for guid, item in latest.items() if guid not in succeeded}


async def sweep(app: GitHubApp, redis: aioredis.Redis, policy: SweepPolicy, now: float) -> SweepReport:
    """One pass: request a redelivery of each failed, unclaimed delivery not requested too recently."""
    report = SweepReport()
    report.scanned, failed = await failed_deliveries(app, policy, now)
    ours = await claimed(redis, list(failed))
    report.failed = [guid for guid in failed if guid not in ours]
    for guid in report.failed:
        if len(report.requested) >= policy.max_requests:
            break
        key = REQUEST_PREFIX + guid
        args: list[str | int] = [repr(now), policy.retry_after_s, int(policy.window_s) + policy.retry_after_s]
        attempts = int(await redis.register_script(_ASK)(keys=[key, key + ":count"], args=args))
        if attempts == 0:
            continue
        if attempts > policy.max_attempts:
            report.gave_up.append(guid)
            continue
        try:
            await app.redeliver(int(failed[guid]["id"]))
        except ForgeError as exc:
            log.warning("could not request a redelivery of %s: %s", guid, exc)
            continue
        report.requested.append(guid)
    if report.requested or report.gave_up:
        log.info(
            "recovery: %d attempts read, %d failed deliveries, %d redeliveries requested, gave up on %s",
            report.scanned, len(report.failed), len(report.requested), report.gave_up or "none",
        )  # fmt: skip
    return report

