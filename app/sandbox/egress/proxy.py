"""The egress proxy: the sandbox's only way out.

It speaks HTTP/1.1 proxy requests (CONNECT for TLS, absolute-URI requests for plain HTTP) on a unix
socket (bound into the sandbox) or a TCP port. Each destination passes the allowlist, then DNS, then the
address checks (no loopback, private, link-local, multicast or metadata addresses), and the proxy
connects to the exact address it checked. A host that carries none of the run's secrets is tunnelled
untouched; a secret's host is intercepted: TLS terminated with a leaf certificate of the run's CA,
placeholders in request headers swapped for the current value, and the request forwarded over verified
TLS. An intercepted request must name the tunnel's host in its `Host` header (and in an absolute-form
target): otherwise a shared front (a CDN) could route the swapped secret to another customer's site,
so the request is refused and reported as `egress.denied`. Plain-HTTP requests get the same
treatment, but sending secrets over plain HTTP is discouraged: anyone on the path reads them.

What one run can hold and record is bounded (`EgressLimits`): connections open at once, the time a
request head may take, the silence a connection may keep, and the events it makes (`ledger`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from app.core.ports import Emit
from app.sandbox.egress.ca import RunCA
from app.sandbox.egress.http import HttpStream, forward, respond, swap_headers
from app.sandbox.egress.ledger import Ledger
from app.sandbox.egress.policy import EgressPolicy, Resolver, SystemResolver, forbidden_reason
from app.sandbox.egress.relay import relay

log = logging.getLogger(__name__)
STREAM_LIMIT = 1024 * 1024
CONNECT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class EgressLimits:
    """What one run's proxy holds open and records. A spliced tunnel holds up to six of the worker's file
    descriptors (two sockets, two pipes), so `max_connections` keeps a run under ~800; connections past it
    get a 503 and are closed. `request_timeout_s` bounds the arrival of each request head (and of a TLS
    handshake), `idle_s` the silence of a tunnel or stream; `events_in_full` and `summary_every_s` are the
    ledger's."""

    max_connections: int = 128
    request_timeout_s: float = 30.0
    idle_s: float = 300.0
    events_in_full: int = 200
    summary_every_s: float = 60.0


class Denied(Exception):
    """A destination the policy refuses; the message is the reason shown to the client and in the event."""


class EgressProxy:
    """One run's proxy. `ca` signs the certificates of intercepted hosts; `upstream_ca` verifies upstreams
    (default: the system trust store). `on_event` receives egress.allowed / egress.denied / egress.error
    with host, port, reason and swapped secret names — never a value — bounded by a `Ledger` (whose
    summaries `clock` times); host `*` and port 0 where no one destination is meant."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        ca: RunCA,
        on_event: Emit | None = None,
        resolver: Resolver | None = None,
        upstream_ca: ssl.SSLContext | None = None,
        limits: EgressLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.ca = ca
        self.limits = limits or EgressLimits()
        self.ledger = Ledger(
            on_event, in_full=self.limits.events_in_full, summary_every_s=self.limits.summary_every_s, clock=clock
        )
        self.resolver = resolver or SystemResolver()
        self.upstream_ca = upstream_ca or ssl.create_default_context()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = 0

    async def start_unix(self, path: str) -> str:
        """Listen on the unix socket `path` (replacing a stale one); returns the path."""
        self._servers.append(await asyncio.start_unix_server(self._accept, path, limit=STREAM_LIMIT))
        return path

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on TCP; returns the bound (host, port)."""
        server = await asyncio.start_server(self._accept, host, port, limit=STREAM_LIMIT)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop listening, end every open connection, and record what the ledger only counted."""
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        await self.ledger.summarize()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self._open >= self.limits.max_connections:
                await self._turn_away(writer)
            else:
                await self._hold(HttpStream(h11.SERVER, reader, writer, idle_s=self.limits.idle_s))
        except asyncio.CancelledError:
            pass  # close(): the stream callback of asyncio must not see a cancelled task
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _hold(self, client: HttpStream) -> None:
        """Serve one connection, counted against `max_connections` while it is open."""
        self._open += 1
        try:
            await self._serve(client)
        except (OSError, h11.ProtocolError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.debug("egress connection ended: %s", exc)  # TimeoutError too: a request late, a stream idle
        finally:
            self._open -= 1
            await client.close()

    async def _turn_away(self, writer: asyncio.StreamWriter) -> None:
        """Answer a connection past the limit with a 503 and close it, unread."""
        reason = (
            f"{self.limits.max_connections} connections were already open, the most one run may hold; "
            "close idle ones, or open fewer at a time"
        )
        body = f"routines egress proxy: {reason}\n".encode()
        head = f"HTTP/1.1 503 Service Unavailable\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        writer.close()
        await self.ledger.record("egress.error", {"host": "*", "port": 0, "reason": reason})

    async def _request(self, stream: HttpStream) -> h11.Event | type[h11.PAUSED]:
        """The next event from `stream`, where a request head is due: within `request_timeout_s`."""
        async with asyncio.timeout(self.limits.request_timeout_s):
            return await stream.next_event()

    async def _serve(self, client: HttpStream) -> None:
        event = await self._request(client)
        if not isinstance(event, h11.Request):
            return
        if event.method == b"CONNECT":
            await self._connect(client, event)
            return
        upstreams: dict[tuple[str, int], HttpStream] = {}
        try:
            while isinstance(event, h11.Request):
                if not await self._plain(client, event, upstreams) or not client.reusable():
                    return
                event = await self._request(client)
        finally:
            for upstream in upstreams.values():
                await upstream.close()

    async def _admit(self, host: str, port: int) -> str:
        """The address to connect to for host:port; raises Denied with the reason."""
        try:
            literal = forbidden_reason(ipaddress.ip_address(host))
        except ValueError:
            literal = None
        if literal is not None:
            raise Denied(literal)
        if not self.policy.allows(host):
            raise Denied(f"{host} is not in the routine's network.allow; add it there to let the run reach it")
        try:
            answers = await self.resolver.resolve(host, port)
        except OSError as exc:
            raise Denied(f"{host} does not resolve ({exc})") from None
        reasons = []
        for answer in answers:
            reason = None if answer.trusted else forbidden_reason(answer.ip)
            if reason is None:
                return str(answer.ip)
            reasons.append(reason)
        raise Denied(f"{host} resolves to a forbidden address: {'; '.join(reasons) or 'no address'}")

    async def _deny(self, client: HttpStream, host: str, port: int, reason: str) -> None:
        await self.ledger.record("egress.denied", {"host": host, "port": port, "reason": reason})
        await respond(client, 403, f"routines egress proxy: {reason}")

    async def _connect(self, client: HttpStream, request: h11.Request) -> None:
        target = request.target.decode("ascii", "replace")
        try:
            parts = urlsplit(f"//{target}")
            host, port = parts.hostname or "", parts.port or 443
        except ValueError:
            host, port = "", 0
        if not host:
            await respond(client, 400, f"CONNECT target {target!r} is not host:port")
            return
        try:
            ip = await self._admit(host, port)
        except Denied as exc:
            await self._deny(client, host, port, str(exc))
            return
        intercept = any(b.applies_to(host) for b in await self.policy.secrets())
        streams = await self._dial(client, host, port, ip, tls=intercept)
        if streams is None:
            return
        reader, writer = streams
        leftover = client.conn.trailing_data[0]
        client.writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if intercept and not leftover:
            upstream = HttpStream(h11.CLIENT, reader, writer, idle_s=self.limits.idle_s)
            try:
                await client.writer.drain()
                await self._intercept(client, upstream, host, port)
            finally:
                await upstream.close()
            return
        await self.ledger.record("egress.allowed", {"host": host, "port": port, "mode": "tunnel", "swapped": []})
        client.detached = True
        await relay((client.reader, client.writer), (reader, writer), leftover, idle_s=self.limits.idle_s)

    async def _dial(
        self, client: HttpStream, host: str, port: int, ip: str, *, tls: bool
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Connect to the admitted address (TLS verified for `host` when `tls`); on failure answer 502."""
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    ip,
                    port,
                    limit=STREAM_LIMIT,
                    ssl=self.upstream_ca if tls else None,
                    server_hostname=host if tls else None,
                ),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            await self.ledger.record("egress.error", {"host": host, "port": port, "reason": reason})
            await respond(client, 502, f"routines egress proxy: cannot reach {host}:{port} ({reason})")
            return None

    async def _intercept(self, client: HttpStream, upstream: HttpStream, host: str, port: int) -> None:
        try:
            async with asyncio.timeout(self.limits.request_timeout_s):
                await client.writer.start_tls(self.ca.server_context(host))
        except TimeoutError:
            log.debug("egress client to %s:%d did not finish its TLS handshake in time", host, port)
            return
        except (OSError, ssl.SSLError) as exc:
            reason = f"TLS with the sandboxed client failed ({exc}); the tool must trust SSL_CERT_FILE"
            await self.ledger.record("egress.error", {"host": host, "port": port, "reason": reason})
            return
        tls_client = HttpStream(h11.SERVER, client.reader, client.writer, idle_s=self.limits.idle_s)
        while True:
            event = await self._request(tls_client)
            if not isinstance(event, h11.Request):
                return
            other = _other_host(event, host, port)
            if other is not None:
                await self._deny(tls_client, host, port, other)
                return
            headers, swapped, scrub = swap_headers(event.headers, await self.policy.secrets(), host)
            status = await forward(tls_client, event, upstream, target=event.target, headers=headers, scrub=scrub)
            await self.ledger.record(
                "egress.allowed",
                {
                    "host": host,
                    "port": port,
                    "mode": "intercept",
                    "method": event.method.decode(),
                    "status": status,
                    "swapped": swapped,
                },
            )
            if not (tls_client.reusable() and upstream.reusable()):
                return

    async def _plain(
        self, client: HttpStream, request: h11.Request, upstreams: dict[tuple[str, int], HttpStream]
    ) -> bool:
        """Forward one absolute-URI request; False when the client connection must close."""
        try:
            url = urlsplit(request.target.decode("ascii", "replace"))
            host, port, scheme, netloc = url.hostname or "", url.port or 80, url.scheme, url.netloc
        except ValueError:
            host, port, scheme, netloc = "", 0, "", ""
        if scheme != "http" or not host or "@" in netloc:
            await respond(client, 400, "send http://HOST/PATH to this proxy, or CONNECT HOST:PORT for https")
            return False
        other = _other_host(request, host, port)
        if other is not None:
            await self._deny(client, host, port, other)
            return False
        upstream = upstreams.get((host, port))
        if upstream is None:
            for stale in list(upstreams):  # one upstream per client connection: the cap counts sockets
                await upstreams.pop(stale).close()
            try:
                ip = await self._admit(host, port)
            except Denied as exc:
                await self._deny(client, host, port, str(exc))
                return False
            streams = await self._dial(client, host, port, ip, tls=False)
            if streams is None:
                return False
            upstream = upstreams[(host, port)] = HttpStream(h11.CLIENT, *streams, idle_s=self.limits.idle_s)
        headers, swapped, scrub = swap_headers(request.headers, await self.policy.secrets(), host)
        origin = (url.path or "/") + (f"?{url.query}" if url.query else "")
        status = await forward(client, request, upstream, target=origin.encode(), headers=headers, scrub=scrub)
        await self.ledger.record(
            "egress.allowed",
            {
                "host": host,
                "port": port,
                "mode": "http",
                "method": request.method.decode(),
                "status": status,
                "swapped": swapped,
            },
        )
        if not upstream.reusable():
            await upstreams.pop((host, port)).close()
        return True


def _other_host(request: h11.Request, host: str, port: int) -> str | None:
    """Why `request` names another destination than host:port, or None when every name it gives (its Host
    header, an absolute-form target's authority) is exactly that host, optionally with that port.

    Exact, not parsed: a front that reads `evil.example@host`, `host/.evil.example` or `host#x` its
    own way must never see the secret."""
    named = [value.decode("latin-1") for name, value in request.headers if name == b"host"]
    target = request.target.decode("latin-1")
    if "://" in target:
        named.append(target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0])
    for value in named:
        if value.strip().lower() not in _spellings(host, port):
            return f"the request names {value!r}, not {host}:{port} where it was sent; each host needs its own request"
    return None


def _spellings(host: str, port: int) -> set[str]:
    name = host.lower().rstrip(".")
    name = f"[{name}]" if ":" in name else name
    return {spelled + suffix for spelled in (name, f"{name}.") for suffix in ("", f":{port}")}
