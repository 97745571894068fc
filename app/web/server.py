"""How the web process is served: uvicorn, with `POST /webhooks/github` answered by `WebhookProtocol`.

`WebhookProtocol` is uvicorn's httptools protocol with one shortcut: a webhook's body is gathered in the
parser's callbacks and `GitHubWebhook.reply` (the same checks, claim and queue as the ASGI endpoint)
is written straight to the transport. Profiled under load (bench/webhook_ack.py, py-spy), the ASGI
round — a scope dict, a RequestResponseCycle and its Event, the receive/send messages, the
proxy-headers middleware and Starlette's routing — cost about 30 µs of an acknowledgement's ~110 µs
in the web process. With it, one process acknowledges ~1.45x the deliveries per second it does through
the ASGI route (bench/webhook_ack.py, `routines` vs `routines-asgi`, median of five rounds).

Everything else goes the ASGI way unchanged: other paths and methods, `Expect: 100-continue`, a root
path, a concurrency limit, an app without its lifespan state, and a webhook pipelined behind a request
still being answered (uvicorn queues it). The shortcut relies on uvicorn's parser callbacks and its
`cycle` bookkeeping (pipelining, shutdown and lost connections read `response_complete`, `keep_alive`
and `disconnected` from it); tests/web/test_server.py drives a real server over sockets, so an uvicorn
release that changes them fails there.
"""

from __future__ import annotations

import http
import logging
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.web.webhooks import (
    MAX_BODY_BYTES,
    PATH,
    GitHubWebhook,
    Headers,
    Reply,
    declared_length,
    refused,
    too_large,
)

log = logging.getLogger(__name__)

_PATH = PATH.encode()


def config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn settings of the web process (`routines web`, `routines dev`, the benchmark):
    uvloop and `WebhookProtocol`, and no logging config of uvicorn's own, so its lines pass through
    the root handlers, which redact."""
    return uvicorn.Config(app, host=host, port=port, loop="uvloop", http=WebhookProtocol, log_config=None, **options)


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


class _NoEvent:
    """uvicorn sets the cycle's `message_event` when a connection is lost; a webhook waits on nothing."""

    def set(self) -> None:
        pass


class _Webhook:
    """A webhook request being read or answered. It stands in uvicorn's `cycle`, so uvicorn's pipelining
    (a request behind it waits), shutdown (`keep_alive` turned off) and lost connections apply to it."""

    __slots__ = ("chunks", "disconnected", "headers", "http_version", "keep_alive", "response_complete", "size")
    message_event = _NoEvent()

    def __init__(self, headers: Headers, keep_alive: bool, http_version: str) -> None:
        self.headers = headers
        self.chunks: list[bytes] = []
        self.size = 0
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self.http_version = http_version

    def body(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


class WebhookProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering `POST /webhooks/github` without the ASGI round."""

    def on_headers_complete(self) -> None:
        endpoint = self.app_state.get("webhook")
        if not isinstance(endpoint, GitHubWebhook) or not self._takes_webhook():
            super().on_headers_complete()
            return
        version = self.parser.get_http_version()
        hook = _Webhook(self.headers, version != "1.0" and self.parser.should_keep_alive(), version)
        self.cycle = cast(RequestResponseCycle, hook)
        declared = declared_length(self.headers)
        if declared is not None and declared > MAX_BODY_BYTES:
            self._write(hook, too_large(declared))  # before reading; the body that follows is dropped

    def _takes_webhook(self) -> bool:
        cycle = self.cycle
        return (
            self.url.partition(b"?")[0] == _PATH
            and self.parser.get_method() == b"POST"
            and not self.expect_100_continue
            and not self.root_path
            and self.limit_concurrency is None
            and not self.parser.should_upgrade()
            and (cycle is None or cycle.response_complete)
            and "services" in self.app_state
        )

    def on_body(self, body: bytes) -> None:
        hook = self.cycle
        if not isinstance(hook, _Webhook):
            super().on_body(body)
            return
        if hook.response_complete:
            return  # refused already: the rest of the body is read and dropped, as uvicorn does
        hook.size += len(body)
        if hook.size > MAX_BODY_BYTES:
            hook.chunks = []
            self._write(hook, too_large(None))
            return
        hook.chunks.append(body)

    def on_message_complete(self) -> None:
        hook = self.cycle
        if not isinstance(hook, _Webhook):
            super().on_message_complete()
            return
        if hook.response_complete:
            return
        task = self.loop.create_task(self._answer(hook))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)  # held (the loop keeps only weak references); graceful shutdown waits for it

    async def _answer(self, hook: _Webhook) -> None:
        endpoint: GitHubWebhook = self.app_state["webhook"]
        try:
            reply = await endpoint.reply(self.app_state["services"], hook.headers, hook.body())
        except Exception:
            log.exception("the webhook failed")  # the web's catch-all, as uvicorn's for an ASGI app
            reply = refused(500, "internal error while handling the delivery; see the web process's log")
        self._write(hook, reply)

    def _write(self, hook: _Webhook, reply: Reply) -> None:
        """Send `reply` (closing the connection unless it is kept alive), then let uvicorn start the next
        pipelined request or arm the keep-alive timer."""
        if hook.response_complete or hook.disconnected:
            return
        hook.response_complete = True
        parts = [_STATUS_LINES[reply.status]]
        for name, value in [*self.server_state.default_headers, *reply.headers]:
            parts += [name, b": ", value, b"\r\n"]
        if not hook.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += [b"\r\n", reply.body]
        self.transport.write(b"".join(parts))
        if self.access_log:
            client = f"{self.client[0]}:{self.client[1]}" if self.client else ""
            self.access_logger.info('%s - "POST %s HTTP/%s" %d', client, PATH, hook.http_version, reply.status)
        if not hook.keep_alive:
            self.transport.close()
        self.on_response_complete()
