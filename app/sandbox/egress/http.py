"""HTTP/1.1 message forwarding for the egress proxy: h11 on both sides, placeholders swapped in headers."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Sequence

import h11

from app.sandbox.egress.policy import SecretBinding

READ_SIZE = 256 * 1024
Headers = list[tuple[bytes, bytes]]

# Hop-by-hop headers of the proxy leg; never forwarded. Expect is answered by the proxy itself.
_PROXY_ONLY = frozenset({b"proxy-connection", b"proxy-authorization", b"keep-alive", b"expect", b"te", b"upgrade"})


class HttpStream:
    """One side of a proxied HTTP/1.1 conversation: an h11 state machine over an asyncio stream pair. A read
    or write that makes no progress for `idle_s` raises TimeoutError (None: no limit)."""

    def __init__(
        self,
        role: type[h11.CLIENT] | type[h11.SERVER],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        idle_s: float | None = None,
    ) -> None:
        self.conn = h11.Connection(role)
        self.reader = reader
        self.writer = writer
        self.idle_s = idle_s
        self.detached = False  # the transport was handed to a relay, which closes it

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """The next parsed event; reads from the socket as needed. EOF yields ConnectionClosed (or raises)."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            async with asyncio.timeout(self.idle_s):
                data = await self.reader.read(READ_SIZE)
            self.conn.receive_data(data)

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            async with asyncio.timeout(self.idle_s):
                await self.writer.drain()

    def reusable(self) -> bool:
        """Start the next request/response cycle if both sides finished cleanly; False when the connection is spent."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False

    async def close(self) -> None:
        if self.detached:
            return
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def swap_headers(
    headers: Sequence[tuple[bytes, bytes]], bindings: Sequence[SecretBinding], host: str
) -> tuple[Headers, list[str]]:
    """Headers to forward to `host`, with each placeholder of a secret bound to `host` replaced by its value.

    Placeholders are found anywhere in a header value, and inside `Basic` credentials after base64 decoding.
    Secrets of other domains are left as their placeholders. Returns the headers and the swapped secret names.
    """
    active = [b for b in bindings if b.applies_to(host)]
    swapped: set[str] = set()
    out: Headers = []
    for name, raw in headers:
        if name in _PROXY_ONLY:
            continue
        value = raw.decode("latin-1")
        if active:
            value = _swap_text(value, active, swapped)
            if name == b"authorization" and value[:6].lower() == "basic ":
                value = value[:6] + _swap_basic(value[6:].strip(), active, swapped)
        out.append((name, value.encode("latin-1", "replace")))
    return out, sorted(swapped)


def _swap_text(text: str, active: Sequence[SecretBinding], swapped: set[str]) -> str:
    for binding in active:
        if binding.placeholder in text:
            text = text.replace(binding.placeholder, binding.value)
            swapped.add(binding.name)
    return text


def _swap_basic(token: str, active: Sequence[SecretBinding], swapped: set[str]) -> str:
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return token
    replaced = _swap_text(decoded, active, swapped)
    return token if replaced == decoded else base64.b64encode(replaced.encode()).decode("ascii")


async def forward(
    client: HttpStream, request: h11.Request, upstream: HttpStream, *, target: bytes, headers: Headers
) -> int:
    """Send `request` (with `target` and `headers`) and its body upstream, and stream the response back.

    Returns the response status. Raises h11.ProtocolError or OSError when either side breaks off.
    """
    if client.conn.they_are_waiting_for_100_continue:
        await client.send(h11.InformationalResponse(status_code=100, headers=[]))
    await upstream.send(h11.Request(method=request.method, target=target, headers=headers))
    await _copy_body(client, upstream)
    while True:
        event = await upstream.next_event()
        if isinstance(event, h11.InformationalResponse):
            continue
        if not isinstance(event, h11.Response):
            raise h11.RemoteProtocolError(f"upstream sent {event!r} instead of a response")
        kept = [(k, v) for k, v in event.headers if k not in _PROXY_ONLY]
        await client.send(h11.Response(status_code=event.status_code, headers=kept, reason=event.reason))
        await _copy_body(upstream, client)
        return event.status_code


async def _copy_body(src: HttpStream, dst: HttpStream) -> None:
    while True:
        event = await src.next_event()
        if isinstance(event, h11.Data):
            await dst.send(h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            await dst.send(h11.EndOfMessage(headers=event.headers))
            return
        else:
            raise h11.RemoteProtocolError(f"connection ended inside a message ({event!r})")


async def respond(client: HttpStream, status: int, text: str) -> None:
    """Answer the client with a short plain-text response and mark the connection to close."""
    body = text.encode() + b"\n"
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await client.send(h11.Response(status_code=status, headers=headers))
    await client.send(h11.Data(data=body))
    await client.send(h11.EndOfMessage())
