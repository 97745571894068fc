"""The egress proxy's bounds, over real sockets: the events one run can record, the connections it can hold
open, and how long a request head or a silent tunnel may keep one."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.core.domain import JSON
from app.sandbox.egress.ca import RunCA
from app.sandbox.egress.ledger import Ledger
from app.sandbox.egress.policy import EgressPolicy, SystemResolver
from app.sandbox.egress.proxy import EgressLimits, EgressProxy
from app.sandbox.egress.relay import relay
from tests.support.clock import Clock
from tests.support.echo import echo_until_eof

GUARD_S = 10  # against a hang, not a speed limit
Make = Callable[..., Awaitable["Proxy"]]


@dataclass
class Proxy:
    """A proxy on a unix socket that allows echo.test (a local echo service) and silent.test (a local
    service that reads and never answers)."""

    proxy: EgressProxy
    path: str
    echo_port: int
    silent_port: int
    clock: Clock
    events: list[tuple[str, JSON]] = field(default_factory=list)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(self.path)

    async def connect(self, host: str, port: int = 443) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self.open()
        writer.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        return await reader.readuntil(b"\r\n\r\n"), reader, writer

    async def refuse(self, host: str) -> None:
        head, _, writer = await self.connect(host)
        assert head.startswith(b"HTTP/1.1 403"), head[:100]
        writer.close()

    def of(self, kind: str) -> list[JSON]:
        return [data for type_, data in self.events if type_ == kind]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    echo = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0)
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(-1)

    quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
    proxies: list[EgressProxy] = []

    async def build(**limits: float) -> Proxy:
        clock = Clock(1000.0)
        events: list[tuple[str, JSON]] = []

        async def record(kind: str, data: JSON) -> None:
            events.append((kind, data))

        proxy = EgressProxy(
            EgressPolicy(allow=("echo.test", "silent.test")),
            ca=RunCA(tmp_path / f"ca{len(proxies)}"),
            on_event=record,
            resolver=SystemResolver(overrides={"echo.test": "127.0.0.1", "silent.test": "127.0.0.1"}),
            limits=EgressLimits(**limits),  # type: ignore[arg-type]
            clock=clock,
        )
        proxies.append(proxy)
        path = await proxy.start_unix(str(tmp_path / f"egress{len(proxies)}.sock"))
        ports = [int(s.sockets[0].getsockname()[1]) for s in (echo, quiet)]
        return Proxy(proxy, path, ports[0], ports[1], clock, events)

    yield build
    for proxy in proxies:
        await proxy.close()
    for writer in held:
        writer.close()
    for server in (echo, quiet):
        server.close()
        await server.wait_closed()


async def test_repeated_refusals_are_counted_and_summarized_while_they_come(make: Make) -> None:
    p = await make(events_in_full=3, summary_every_s=60)
    for host in ("a.example", "b.example", "a.example", "c.example", "d.example", "a.example"):
        await p.refuse(host)
    assert [d["host"] for d in p.of("egress.denied")] == ["a.example", "b.example", "c.example"]

    p.clock.advance(61)
    await p.refuse("e.example")
    summary = p.of("egress.denied")[-1]
    assert summary["host"] == "*" and summary["omitted"] == 4  # a twice, d, e
    assert "4 more refusals were not recorded one by one" in summary["reason"]

    await p.refuse("a.example")
    assert len(p.of("egress.denied")) == 4, "the next summary waits for its interval"
    await p.proxy.close()
    assert p.of("egress.denied")[-1]["omitted"] == 1, "closing reports what is still only counted"


async def test_connections_past_the_limit_are_turned_away_and_the_limit_frees_up(make: Make) -> None:
    p = await make(max_connections=3)
    held = [await p.open() for _ in range(3)]
    async with asyncio.timeout(GUARD_S):
        for _ in range(2):
            reader, writer = await p.open()
            answer = await reader.read(-1)
            assert answer.startswith(b"HTTP/1.1 503") and b"3 connections were already open" in answer
            writer.close()
        [error] = p.of("egress.error")
        assert error["host"] == "*" and "the most one run may hold" in error["reason"]

        held.pop()[1].close()
        while True:  # the proxy sees the end of the connection, then has room again
            head, _, writer = await p.connect("evil.example")
            writer.close()
            if head.startswith(b"HTTP/1.1 403"):
                break
            await asyncio.sleep(0.01)
    await p.proxy.close()
    assert p.of("egress.error")[-1]["omitted"] >= 1
    for _, writer in held:
        writer.close()


@pytest.mark.parametrize("sent", [b"", b"CONNECT echo.test:443 HTTP/1.1\r\nHost: ech"])
async def test_a_request_head_that_does_not_arrive_in_time_closes_the_connection(make: Make, sent: bytes) -> None:
    p = await make(request_timeout_s=0.3)
    reader, writer = await p.open()
    writer.write(sent)
    started = time.monotonic()
    async with asyncio.timeout(GUARD_S):
        assert await reader.read(-1) == b""
    assert time.monotonic() - started >= 0.25
    writer.close()


async def test_a_tunnel_lives_while_bytes_move_and_closes_once_silent(make: Make) -> None:
    p = await make(idle_s=0.3)
    head, reader, writer = await p.connect("echo.test", p.echo_port)
    assert head.startswith(b"HTTP/1.1 200")
    await pings_then_silence(reader, writer, 8)  # longer than the idle limit in all, never silent that long


async def pings_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pings: int) -> None:
    """Echo a ping every 0.1 s, `pings` times (the tunnel stays open meanwhile), then fall silent: the
    tunnel must close, and not before its idle limit (0.3 s) has nearly passed."""
    async with asyncio.timeout(GUARD_S):
        for _ in range(pings):
            await asyncio.sleep(0.1)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
        last = time.monotonic()
        assert await reader.read(-1) == b""
    assert time.monotonic() - last >= 0.25
    writer.close()


async def test_an_upstream_that_never_answers_does_not_hold_the_connection(make: Make) -> None:
    p = await make(idle_s=0.3)
    reader, writer = await p.open()
    host = f"silent.test:{p.silent_port}"
    writer.write(f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    async with asyncio.timeout(GUARD_S):
        assert await reader.read(-1) == b""
    writer.close()


async def test_a_silent_tunnel_over_tls_is_closed_too(tmp_path: Path) -> None:
    """One side TLS: the relay's protocol path (not splice), as a tunnel with leftover bytes to a secret's host."""
    ca = RunCA(tmp_path / "ca")
    upstream = await asyncio.start_server(echo_until_eof, "127.0.0.1", 0, ssl=ca.server_context("echo.test"))
    port = int(upstream.sockets[0].getsockname()[1])
    trust = ssl.create_default_context(cafile=str(ca.cert_path))

    async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = await asyncio.open_connection("127.0.0.1", port, ssl=trust, server_hostname="echo.test")
        await relay((reader, writer), tls, idle_s=0.3)

    front = await asyncio.start_server(tunnel, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", int(front.sockets[0].getsockname()[1]))
    await pings_then_silence(reader, writer, 6)
    for server in (front, upstream):
        server.close()
        await server.wait_closed()


async def test_requests_let_through_in_a_loop_are_counted_not_recorded_each() -> None:
    """An agent can repeat an allowed request as fast as the network answers: the same request is
    recorded once, then counted, and the count is reported when the proxy closes."""
    events: list[tuple[str, JSON]] = []

    async def emit(kind: str, data: JSON) -> None:
        events.append((kind, data))

    ledger = Ledger(emit)
    request = {"host": "pypi.org", "port": 443, "mode": "tunnel", "swapped": []}
    for _ in range(1000):
        await ledger.record("egress.allowed", dict(request))
    await ledger.summarize()
    assert [kind for kind, _ in events] == ["egress.allowed", "egress.allowed"]
    assert events[0][1] == request and events[1][1]["omitted"] == 999
