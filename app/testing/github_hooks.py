"""The App's webhook of the GitHub test server: signed deliveries, their log, and redelivery.

    guid = deliver(state, "issues", payload, url, secret)   # POSTs like GitHub, records the attempt
    state.hook_deliveries                                  # every attempt, oldest first

Like GitHub: each attempt is signed with `X-Hub-Signature-256` (and the legacy sha1
`X-Hub-Signature`), carries `X-GitHub-Event`, `X-GitHub-Delivery` (the GUID, the same for
redeliveries) and `X-GitHub-Hook-Installation-Target-ID`; the log lists attempts newest first
with `status_code` 0 when the host could not be reached. GitHub never retries on its own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.testing.github_shapes import iso
from app.testing.github_state import ApiError, GitHubState

JSON = dict[str, Any]
TIMEOUT_S = 10.0  # GitHub gives up on a webhook after 10 seconds


@dataclass
class HookTarget:
    """Where and how a delivery is sent (kept so that it can be redelivered)."""

    url: str
    secret: str
    event: str
    body: bytes


def deliver(state: GitHubState, event: str, payload: JSON, url: str, secret: str, guid: str | None = None) -> str:
    """Send `payload` as webhook `event` to `url`, signed with `secret`; returns the delivery GUID."""
    guid = guid or str(uuid.uuid4())
    body = json.dumps(payload, separators=(",", ":")).encode()
    state.hook_targets[guid] = HookTarget(url, secret, event, body)
    attempt(state, guid, redelivery=False)
    return guid


def signature_headers(secret: str, body: bytes) -> dict[str, str]:
    key = secret.encode()
    return {
        "x-hub-signature": "sha1=" + hmac.new(key, body, hashlib.sha1).hexdigest(),
        "x-hub-signature-256": "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest(),
    }


def attempt(state: GitHubState, guid: str, *, redelivery: bool) -> JSON:
    """POST delivery `guid` once and record the attempt as GitHub lists it."""
    target = state.hook_targets[guid]
    payload = json.loads(target.body)
    headers = {
        "content-type": "application/json",
        "user-agent": "GitHub-Hookshot/test",
        "x-github-event": target.event,
        "x-github-delivery": guid,
        "x-github-hook-id": "1",
        "x-github-hook-installation-target-type": "integration",
        "x-github-hook-installation-target-id": str(state.app_id),
        **signature_headers(target.secret, target.body),
    }
    started = time.monotonic()
    try:
        response = httpx.post(target.url, content=target.body, headers=headers, timeout=TIMEOUT_S)
        status_code, status = (
            response.status_code,
            "OK" if response.is_success else f"Invalid HTTP Response: {response.status_code}",
        )
    except httpx.TimeoutException:
        status_code, status = 0, "timed out"
    except httpx.HTTPError:
        status_code, status = 0, "failed to connect to host"
    repository = payload.get("repository") or {}
    record: JSON = {
        "id": state.new_id(),
        "guid": guid,
        "delivered_at": iso(),
        "redelivery": redelivery,
        "duration": round(time.monotonic() - started, 3),
        "status": status,
        "status_code": status_code,
        "event": target.event,
        "action": payload.get("action"),
        "installation_id": (payload.get("installation") or {}).get("id"),
        "repository_id": repository.get("id"),
        "throttled_at": None,
    }
    state.hook_deliveries.append(record)
    return record


class HooksApi:
    """`GET /app/hook/deliveries` and `POST /app/hook/deliveries/{id}/attempts` (App JWT)."""

    def __init__(self, state: GitHubState) -> None:
        self.state = state

    def _auth(self, request: Request) -> None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise ApiError(401, "A JSON web token could not be decoded")
        self.state.verify_jwt(value.strip())

    async def list_deliveries(self, request: Request) -> Response:
        self._auth(request)
        per_page = min(max(int(request.query_params.get("per_page", "30")), 1), 100)
        newest_first = list(reversed(self.state.hook_deliveries))
        start = 0
        cursor = request.query_params.get("cursor")
        if cursor:
            try:
                after = int(base64.urlsafe_b64decode(cursor.encode()).decode())
            except ValueError:
                raise ApiError(422, "Invalid cursor") from None
            start = next((i + 1 for i, d in enumerate(newest_first) if d["id"] == after), len(newest_first))
        page = newest_first[start : start + per_page]
        headers = {}
        if start + per_page < len(newest_first) and page:
            token = base64.urlsafe_b64encode(str(page[-1]["id"]).encode()).decode()
            link = f"{self.state.base_url}/app/hook/deliveries?per_page={per_page}&cursor={token}"
            headers["link"] = f'<{link}>; rel="next"'
        return JSONResponse([{k: v for k, v in d.items()} for d in page], headers=headers)

    async def redeliver(self, request: Request) -> Response:
        self._auth(request)
        wanted = request.path_params["delivery_id"]
        found = next((d for d in self.state.hook_deliveries if d["id"] == wanted), None)
        if found is None:
            raise ApiError(404, "Not Found")
        self.state.redelivery_requests.append(wanted)
        await asyncio.to_thread(attempt, self.state, found["guid"], redelivery=True)
        return JSONResponse({}, status_code=202)
