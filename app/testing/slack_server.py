"""A Slack-compatible incoming-webhook receiver for tests: records what is posted, answers as Slack does.

    state = SlackState()
    served = serve_in_thread(create_app(state))
    url = state.add_hook(served.url)            # https://hooks.slack.com/services/T…/B…/… look-alike
    ...
    state.messages                              # [(hook path, JSON body), …]

Slack's answers: 200 `ok`; 400 `invalid_payload` for a body that is not JSON with `text` or
`blocks`; 404 `no_service` for an unknown hook. `hang` makes a hook never answer (until
`release()`), to exercise client timeouts; `fail` makes one answer a given status.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

JSON = dict[str, Any]
HANG_LIMIT_S = 60.0


@dataclass
class SlackState:
    hooks: set[str] = field(default_factory=set)
    messages: list[tuple[str, JSON]] = field(default_factory=list)
    hang: set[str] = field(default_factory=set)
    fail: dict[str, int] = field(default_factory=dict)
    released: threading.Event = field(default_factory=threading.Event)

    def add_hook(self, base_url: str) -> str:
        """Register a new hook and return its full URL."""
        path = f"T{secrets.token_hex(4).upper()}/B{secrets.token_hex(4).upper()}/{secrets.token_urlsafe(18)}"
        self.hooks.add(path)
        return f"{base_url}/services/{path}"

    def texts(self) -> list[str]:
        return [str(body.get("text", "")) for _, body in self.messages]

    def release(self) -> None:
        """Let hanging requests end (call before stopping the server)."""
        self.released.set()


def create_app(state: SlackState) -> Starlette:
    async def receive(request: Request) -> Response:
        path = request.path_params["path"]
        if path not in state.hooks:
            return PlainTextResponse("no_service", status_code=404)
        if path in state.hang:
            await asyncio.to_thread(state.released.wait, HANG_LIMIT_S)
            return PlainTextResponse("ok")
        if path in state.fail:
            return PlainTextResponse("channel_is_archived", status_code=state.fail[path])
        try:
            body = json.loads(await request.body())
        except ValueError:
            return PlainTextResponse("invalid_payload", status_code=400)
        if not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
            return PlainTextResponse("invalid_payload" if isinstance(body, dict) else "no_text", status_code=400)
        state.messages.append((path, body))
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/services/{path:path}", receive, methods=["POST"])])
