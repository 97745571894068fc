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
) -> tuple[Headers, list[str], Scrubber | None]:
    """Headers to forward to `host`, with each placeholder of a secret bound to `host` replaced by its value.

    Placeholders are found anywhere in a header value, and inside `Basic` credentials after base64 decoding.
    Secrets of other domains are left as their placeholders. Returns the headers, the swapped secret names,
    and (for a host that any secret is bound to, whether or not this request carried one: the host may
    have kept a value an earlier request sent) the Scrubber that turns the values back into placeholders
    in the response; the request then asks for an uncompressed response, which the scrubber can read.
    """
    active = [b for b in bindings if b.applies_to(host)]
    swapped: set[str] = set()
    echoes: list[tuple[bytes, bytes]] = []
    out: Headers = []
    for name, raw in headers:
        if name in _PROXY_ONLY:
            continue
        value = raw.decode("latin-1")
        if active:
            value = _swap_text(value, active, swapped)
            if name == b"authorization" and value[:6].lower() == "basic ":
                token = value[6:].strip()
                sent = _swap_basic(token, active, swapped)
                if sent != token:
                    echoes.append((sent.encode("ascii"), token.encode("ascii")))
                value = value[:6] + sent
        out.append((name, value.encode("latin-1", "replace")))
    if not active:
        return out, [], None
    echoes += [(b.value.encode("latin-1", "replace"), b.placeholder.encode()) for b in active]
    out = [(k, v) for k, v in out if k != b"accept-encoding"] + [(b"accept-encoding", b"identity")]
    return out, sorted(swapped), Scrubber(echoes)


class Scrubber:
    """Turns the secret values of a host back into their placeholders in its responses (status line,
    headers, body and trailers), so a reply that echoes a header (a CORS preflight, an error quoting
    what it was sent) or returns a value the host kept never hands the sandbox a value. The body is
    scanned as it streams: only an end of a chunk that could begin a value waits for the next chunk,
    so a value split across chunks is caught and a stream of events is not held back."""

    def __init__(self, echoes: Sequence[tuple[bytes, bytes]]) -> None:
        self.echoes = sorted({(v, p) for v, p in echoes if v}, key=lambda pair: -len(pair[0]))
        self._tail = b""

    def text(self, data: bytes) -> bytes:
        for value, placeholder in self.echoes:
            data = data.replace(value, placeholder)
        return data

    def chunk(self, data: bytes) -> bytes:
        """What of the body so far can be passed on; the rest waits for the next chunk or `end`."""
        held = self.text(self._tail + data)
        wait = self._partial(held)
        self._tail = held[len(held) - wait :] if wait else b""
        return held[: len(held) - wait]

    def _partial(self, data: bytes) -> int:
        """The length of the longest end of `data` that is the beginning of a value (0: none)."""
        longest = 0
        for value, _ in self.echoes:
            for size in range(min(len(value) - 1, len(data)), longest, -1):
                if data.endswith(value[:size]):
                    longest = size
                    break
        return longest

    def end(self) -> bytes:
        held, self._tail = self._tail, b""
        return held


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
    client: HttpStream,
    request: h11.Request,
    upstream: HttpStream,
    *,
    target: bytes,
    headers: Headers,
    scrub: Scrubber | None = None,
) -> int:
    """Send `request` (with `target` and `headers`) and its body upstream, and stream the response back,
    through `scrub` when the request carried secrets (its length may change: it goes without
    Content-Length; a compressed one, which cannot be checked, is refused with a 502).

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
        reason = event.reason
        if scrub is not None:
            encodings = {e.strip().lower() for k, v in kept if k == b"content-encoding" for e in v.split(b",")}
            if encodings - {b"", b"identity"}:
                named = b", ".join(sorted(encodings - {b"", b"identity"})).decode("latin-1")
                await respond(
                    client,
                    502,
                    f"the upstream answered with a {named}-encoded body, which the proxy cannot check for the "
                    "values of the secrets bound to this host; it was asked for an uncompressed one",
                )
                return 502
            sized = request.method == b"HEAD" or event.status_code in (204, 304)  # no body: the size stays
            kept = [(k, scrub.text(v)) for k, v in kept if sized or k != b"content-length"]
            reason = scrub.text(reason)
        await client.send(h11.Response(status_code=event.status_code, headers=kept, reason=reason))
        await _copy_body(upstream, client, scrub)
        return event.status_code


async def _copy_body(src: HttpStream, dst: HttpStream, scrub: Scrubber | None = None) -> None:
    while True:
        event = await src.next_event()
        if isinstance(event, h11.Data):
            data = scrub.chunk(event.data) if scrub is not None else event.data
            if data:
                await dst.send(h11.Data(data=data))
        elif isinstance(event, h11.EndOfMessage):
            trailers = list(event.headers)
            if scrub is not None:
                rest = scrub.end()
                if rest:
                    await dst.send(h11.Data(data=rest))
                trailers = [(k, scrub.text(v)) for k, v in trailers]
            await dst.send(h11.EndOfMessage(headers=trailers))
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
