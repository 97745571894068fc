"""`POST /webhooks/github`: verify, claim, queue, answer 202 — the work happens in the worker.

Contract (what GitHub sees):
- 401 without `X-Hub-Signature-256` or when it is not the HMAC-SHA256 of the raw body with
  GITHUB_WEBHOOK_SECRET (a sha1-only `X-Hub-Signature` is refused); 500 naming the setting when
  no secret is configured (the web process still serves the API and UI in local mode).
- 413 past 25 MB (GitHub's own cap), counted while reading, whatever Content-Length says.
- 400 for a body that is not a JSON object, without X-GitHub-Event / X-GitHub-Delivery, or with a
  delivery GUID that is not 1-64 letters, digits and hyphens (GitHub's are UUIDs; it becomes part of
  Redis keys, so `<guid>:fired` must never pass for a GUID).
- 200 for `ping`; 202 for an event no routine listens to (ignored, logged).
- 202 once the delivery is claimed, stored and taken in (one Redis round trip, app.triggers.intake);
  200 for a delivery claimed before (a redelivery is acknowledged, never run twice), and for a body taken
  in before under another GUID or event name (a replay: only the body is signed). A 2xx has no body;
  its `X-Routines-Delivery` header says what happened (`pong`, `queued`, `duplicate: …`, `ignored: …`).
- 503 when Redis is unreachable: never 2xx, so GitHub marks the delivery failed and the
  recovery sweep has it redelivered.

Every answer is counted by outcome (`routines_webhook_deliveries_total` on `GET /metrics`) in the process,
without a round trip: the counts reach Redis in the background, a 503's once Redis is back.

`GitHubWebhook.reply` holds the whole decision; `GitHubWebhook.__call__` serves it as a plain ASGI
endpoint.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import StoreError
from app.core.metrics import WEBHOOK_DELIVERIES
from app.store.delivery_log import DeliveryLog, DeliveryRecord
from app.triggers.followups import EVENTS as FOLLOW_UP_EVENTS
from app.triggers.intake import Intake

if TYPE_CHECKING:
    from app.services import Services

log = logging.getLogger(__name__)

PATH = "/webhooks/github"
MAX_BODY_BYTES = 25 * 1024 * 1024
_JSON_HEADERS = [(b"content-type", b"application/json")]
_READ_HEADERS = frozenset({b"x-hub-signature-256", b"x-github-event", b"x-github-delivery"})
_REFUSALS = {400: "bad_request", 401: "bad_signature", 413: "too_large", 503: "unavailable"}
_GUID = re.compile(r"[A-Za-z0-9-]{1,64}")
_ANSWERS = {
    Intake.QUEUED: (202, "queued"),
    Intake.DUPLICATE: (200, "duplicate: claimed before, not run again"),
    Intake.REPLAY: (200, "duplicate: a replay, the same signed body came before under another GUID; not run"),
}

Headers = list[tuple[bytes, bytes]]


class _AnyObject(msgspec.Struct):
    """Any JSON object: decoding into it checks the whole document's syntax but builds nothing (every
    field is unknown and skipped), about 3× cheaper than a full parse of a 12 KB payload. The worker
    parses the payload for real."""


_JSON_OBJECT = msgspec.json.Decoder(_AnyObject)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the webhook answers."""

    status: int
    headers: Headers
    body: bytes = b""


def acknowledged(status: int, outcome: str) -> Reply:
    """A 2xx with the outcome in a header and no body (GitHub's delivery log shows headers): the whole
    answer is one small write."""
    return Reply(status, [(b"content-length", b"0"), (b"x-routines-delivery", outcome.encode())])


def refused(status: int, reason: str) -> Reply:
    """A refusal with its reason as JSON; a 503 says when to retry."""
    body = msgspec.json.encode({"error": reason})
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"30"))
    return Reply(status, headers, body)


def too_large(size: int | None, limit: int = MAX_BODY_BYTES) -> Reply:
    """413 for a body declared as `size` bytes, or (None) found over `limit` while reading."""
    what = "body is" if size is None else f"body of {size} bytes is"
    return refused(413, f"{what} over the {limit}-byte limit of GitHub webhooks")


def outcome_of(reply: Reply) -> str:
    """What a reply says happened, as the `outcome` label of routines_webhook_deliveries_total: the first word
    of a 2xx's X-Routines-Delivery (queued, duplicate, ignored, pong), else the refusal's kind."""
    if reply.status < 300:
        for name, value in reply.headers:
            if name == b"x-routines-delivery":
                return value.split(b":", 1)[0].decode()
    return _REFUSALS.get(reply.status, "error")


class _Refused(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _refuse(status: int, reason: str) -> _Refused:
    return _Refused(refused(status, reason))


async def read_body(receive: Receive, declared: int | None, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes."""
    if declared is not None and declared > limit:
        raise _Refused(too_large(declared, limit))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _refuse(400, "the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Refused(too_large(None, limit))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def declared_length(headers: Headers) -> int | None:
    """The Content-Length a request declares, None when absent or not a number."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def check_json_object(body: bytes) -> None:
    """Raise 400 unless `body` is one JSON object in UTF-8."""
    try:
        _JSON_OBJECT.decode(body)
        if not body.isascii():
            body.decode()
    except msgspec.ValidationError:
        raise _refuse(400, "body is not a JSON object") from None
    except msgspec.DecodeError as exc:
        raise _refuse(400, f"body is not JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise _refuse(400, f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None


def verify_signature(secret: bytes, body: bytes, header: str | None) -> str:
    """The hex HMAC-SHA256 of `body`; raise 401 unless `header` is `sha256=<it>` (constant-time comparison)."""
    if not header:
        raise _refuse(401, "X-Hub-Signature-256 is missing; set a webhook secret in the GitHub App settings")
    if not header.startswith("sha256="):
        raise _refuse(401, "X-Hub-Signature-256 is not of the form sha256=<hex>")
    expected = hmac.digest(secret, body, "sha256").hex()  # OpenSSL's one-shot HMAC
    if not hmac.compare_digest(header[7:].encode(), expected.encode()):
        raise _refuse(401, "X-Hub-Signature-256 does not match the body; check GITHUB_WEBHOOK_SECRET")
    return expected


class GitHubWebhook:
    """The webhook of one web app; `reply` decides, `__call__` serves it as an ASGI endpoint (reading
    Services from the lifespan state, `scope["state"]["services"]`)."""

    def __init__(self, catalog_ttl_s: float = 1.0) -> None:
        self.catalog_ttl_s = catalog_ttl_s
        self._events: frozenset[str] = frozenset()
        self._events_at = -1e9
        self._catalog: object = None

    async def _wanted(self, services: Services) -> frozenset[str]:
        """The events some routine listens to; the catalog (a stat per file, a GET for the API routines)
        is read at most once per TTL."""
        now = time.monotonic()
        if now - self._events_at > self.catalog_ttl_s or self._catalog is not services.catalog:
            await services.refresh_routines()
            listened = {e for r in services.catalog.all().values() for e in r.on.github}
            self._events = frozenset(listened | FOLLOW_UP_EVENTS.keys())  # feedback on our own draft PRs
            self._events_at, self._catalog = now, services.catalog
        return self._events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive, declared_length(scope["headers"]))
            reply = await self.reply(scope["state"]["services"], scope["headers"], body)
        except _Refused as refusal:
            reply = refusal.reply
        except Exception as exc:  # the web layer's catch-all: GitHub sees a 500 and redelivers later
            log.exception("the webhook failed")
            reply = refused(500, f"internal error: {type(exc).__name__}")
        metrics = getattr(scope.get("state", {}).get("services"), "metrics", None)  # none without a lifespan
        if metrics is not None:
            metrics.count(WEBHOOK_DELIVERIES, outcome=outcome_of(reply))
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        await send({"type": "http.response.body", "body": reply.body})
        if outcome_of(reply) in ("duplicate", "ignored"):  # after the answer: GitHub never waits for this
            await _log_turned_away(scope, reply)

    async def reply(self, services: Services, headers: Headers, body: bytes) -> Reply:
        """The answer to a delivery with these request `headers` and whole `body`."""
        read = {k.decode(): v.decode("latin-1") for k, v in headers if k in _READ_HEADERS}
        try:
            status, outcome = await self._handle(services, read, body)
        except _Refused as refusal:
            if refusal.reply.status >= 500:
                log.error("webhook refused: %s", refusal.reply.body.decode())
            return refusal.reply
        return acknowledged(status, outcome)

    async def _handle(self, services: Services, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        secret = services.settings.github_webhook_secret
        if not secret:
            raise _refuse(500, "GITHUB_WEBHOOK_SECRET is not set; set it to the webhook secret of the GitHub App")
        digest = verify_signature(secret.encode(), body, headers.get("x-hub-signature-256"))
        event = headers.get("x-github-event")
        guid = headers.get("x-github-delivery")
        if not event or not guid:
            raise _refuse(400, "X-GitHub-Event and X-GitHub-Delivery headers are required")
        if not _GUID.fullmatch(guid):
            raise _refuse(400, "X-GitHub-Delivery must be 1 to 64 letters, digits and hyphens (GitHub sends a UUID)")
        check_json_object(body)
        if event == "ping":
            return 200, "pong"
        if event not in await self._wanted(services):
            log.info("delivery %s: no routine listens to %s; ignored", guid, event)
            return 202, f"ignored: no routine listens to {event}"
        try:
            intake = await services.deliveries().enqueue(guid, event, body, digest)
        except StoreError as exc:
            raise _refuse(503, f"{exc}; GitHub will show the delivery as failed and it will be redelivered") from None
        if intake is Intake.REPLAY:
            log.warning("delivery %s (%s): its signed body was taken in before under another GUID; a replay, not run",
                        guid, event)  # fmt: skip
        return _ANSWERS[intake]


class WebhookFirst:
    """An ASGI middleware that hands `POST /webhooks/github` to the webhook before Starlette's router and
    exception middleware (the route is still there, for anything that walks the routes): GitHub's
    deliveries are the one hot path of the web process, and they carry no exception for those to map."""

    def __init__(self, app: ASGIApp, webhook: GitHubWebhook) -> None:
        self.app = app
        self.webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST":
            await self.webhook(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _log_turned_away(scope: Scope, reply: Reply) -> None:
    """Put a delivery the web process answered itself (a duplicate, or an event no routine listens to) in
    the console's delivery log; the workers log the rest. Best effort: a Redis failure is only logged."""
    services = scope.get("state", {}).get("services")
    if services is None:
        return
    headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in _READ_HEADERS}
    why = next((v.decode() for k, v in reply.headers if k == b"x-routines-delivery"), "")
    outcome, _, reason = why.partition(":")
    record = DeliveryRecord(
        headers.get("x-github-delivery", ""), headers.get("x-github-event", ""), outcome, why={"*": reason.strip()}
    )
    try:
        await DeliveryLog(services.store.redis, services.store.prefix).record(record)
    except StoreError as exc:
        log.debug("delivery %s not written to the delivery log: %s", record.guid, exc)
