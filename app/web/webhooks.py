"""`POST /webhooks/github`: verify, claim, queue, answer 202 — the work happens in the worker.

Contract (what GitHub sees):
- 401 without `X-Hub-Signature-256` or when it is not the HMAC-SHA256 of the raw body with
  GITHUB_WEBHOOK_SECRET (a sha1-only `X-Hub-Signature` is refused); 500 naming the setting when
  no secret is configured (the web process still serves the API and UI in local mode).
- 413 past 25 MB (GitHub's own cap), counted while reading, whatever Content-Length says.
- 400 for a body that is not a JSON object, or without X-GitHub-Event / X-GitHub-Delivery.
- 200 for `ping`; 202 for an event no routine listens to (ignored, logged).
- 202 once the delivery is claimed, stored and queued (one Redis round trip); 200 for a
  delivery claimed before (a redelivery is acknowledged, never run twice). A 2xx has no body;
  its `X-Routines-Delivery` header says what happened (`pong`, `queued`, `duplicate: …`, `ignored: …`).
- 503 when Redis is unreachable: never 2xx, so GitHub marks the delivery failed and the
  recovery sweep has it redelivered.

Written as a plain ASGI endpoint: the webhook is the hot path, and GitHub waits 10 s at most.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import TYPE_CHECKING

import msgspec
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import StoreError
from app.followup import EVENTS as FOLLOW_UP_EVENTS

if TYPE_CHECKING:
    from app.services import Services

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 25 * 1024 * 1024
_JSON_HEADERS = [(b"content-type", b"application/json")]
_READ_HEADERS = frozenset({b"content-length", b"x-hub-signature-256", b"x-github-event", b"x-github-delivery"})


class _AnyObject(msgspec.Struct):
    """Any JSON object: decoding into it checks the whole document's syntax but builds nothing (every
    field is unknown and skipped), about 3× cheaper than a full parse of a 12 KB payload. The worker
    parses the payload for real."""


_JSON_OBJECT = msgspec.json.Decoder(_AnyObject)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Headers = list[tuple[bytes, bytes]]


async def _acknowledge(send: Send, status: int, outcome: str) -> None:
    """A 2xx with the outcome in a header and no body: uvicorn then writes the response in one syscall
    instead of two (headers, then body), a tenth of an ack's cost. GitHub's delivery log shows headers."""
    headers = [(b"content-length", b"0"), (b"x-routines-delivery", outcome.encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _send(send: Send, status: int, body: dict[str, object], extra: Headers | None = None) -> None:
    data = msgspec.json.encode(body)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(data)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def read_body(receive: Receive, declared: int | None, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes."""
    if declared is not None and declared > limit:
        raise _Refused(413, f"body of {declared} bytes is over the {limit}-byte limit of GitHub webhooks")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Refused(400, "the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"body is over the {limit}-byte limit of GitHub webhooks")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_json_object(body: bytes) -> None:
    """Raise 400 unless `body` is one JSON object in UTF-8."""
    try:
        _JSON_OBJECT.decode(body)
        if not body.isascii():
            body.decode()
    except msgspec.ValidationError:
        raise _Refused(400, "body is not a JSON object") from None
    except msgspec.DecodeError as exc:
        raise _Refused(400, f"body is not JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise _Refused(400, f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None


def verify_signature(secret: bytes, body: bytes, header: str | None) -> None:
    """Raise 401 unless `header` is `sha256=<hex HMAC-SHA256 of body>` (constant-time comparison)."""
    if not header:
        raise _Refused(401, "X-Hub-Signature-256 is missing; set a webhook secret in the GitHub App settings")
    if not header.startswith("sha256="):
        raise _Refused(401, "X-Hub-Signature-256 is not of the form sha256=<hex>")
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(header[7:].encode(), expected.encode()):
        raise _Refused(401, "X-Hub-Signature-256 does not match the body; check GITHUB_WEBHOOK_SECRET")


class GitHubWebhook:
    """The ASGI endpoint; reads Services from the lifespan state (`scope["state"]["services"]`)."""

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
        services: Services = scope["state"]["services"]
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in _READ_HEADERS}
        try:
            status, answer = await self._handle(services, headers, receive)
        except _Refused as refused:
            if refused.status >= 500:
                log.error("webhook refused: %s", refused)
            extra = [(b"retry-after", b"30")] if refused.status == 503 else []
            await _send(send, refused.status, {"error": str(refused)}, extra)
            return
        await _acknowledge(send, status, answer)

    async def _handle(self, services: Services, headers: dict[str, str], receive: Receive) -> tuple[int, str]:
        secret = services.settings.github_webhook_secret
        if not secret:
            raise _Refused(500, "GITHUB_WEBHOOK_SECRET is not set; set it to the webhook secret of the GitHub App")
        length = headers.get("content-length")
        body = await read_body(receive, int(length) if length and length.isdigit() else None)
        verify_signature(secret.encode(), body, headers.get("x-hub-signature-256"))
        event = headers.get("x-github-event")
        guid = headers.get("x-github-delivery")
        if not event or not guid or len(guid) > 100:
            raise _Refused(400, "X-GitHub-Event and X-GitHub-Delivery headers are required")
        check_json_object(body)
        if event == "ping":
            return 200, "pong"
        if event not in await self._wanted(services):
            log.info("delivery %s: no routine listens to %s; ignored", guid, event)
            return 202, f"ignored: no routine listens to {event}"
        try:
            queued = await services.deliveries().enqueue(guid, event, body)
        except StoreError as exc:
            raise _Refused(503, f"{exc}; GitHub will show the delivery as failed and it will be redelivered") from None
        if not queued:
            return 200, "duplicate: claimed before, not run again"
        return 202, "queued"


routes: list[Route] = [Route("/webhooks/github", GitHubWebhook(), methods=["POST"])]


def fast_path(app: ASGIApp, endpoint: GitHubWebhook | None = None) -> ASGIApp:
    """`app` with POST /webhooks/github answered before Starlette's middleware and router (the hot path).

    Everything else, including the lifespan (which sets `scope["state"]`), goes to `app`.
    """
    webhook = endpoint or GitHubWebhook()
    path = routes[0].path

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == path and scope["method"] == "POST":
            await webhook(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch
