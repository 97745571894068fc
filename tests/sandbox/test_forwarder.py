"""The sandbox's forwarder as its own process, run the way bwrap.py runs it (`python3 -I -S -B FILE PORT SOCKET`),
between a real TCP client on 127.0.0.1 and a real unix-socket server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.sandbox.egress import forwarder
from tests.support.echo import echo_until_eof

MB = 1024 * 1024
HANG_S = 60  # only a guard against a hang, never a speed limit


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Path]:
    path = tmp_path / "egress.sock"
    server = await asyncio.start_unix_server(echo_until_eof, path=str(path))
    yield path
    server.close()
    await server.wait_closed()


@pytest.fixture
async def port(upstream: Path) -> AsyncIterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    argv = [sys.executable, "-I", "-S", "-B", forwarder.__file__, str(free), str(upstream)]
    process = await asyncio.create_subprocess_exec(*argv)
    try:
        for _ in range(500):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", free)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            break
        yield free
    finally:
        process.terminate()
        await process.wait()


async def exchange(port: int, payload: bytes) -> bytes:
    """Send `payload`, end the writing side, and return everything that comes back until EOF."""
    async with asyncio.timeout(HANG_S):
        return await _exchange(port, payload)


async def _exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send())
    received = await reader.read(-1)
    await sending
    writer.close()
    return received


async def test_bytes_pass_both_ways_intact_and_the_end_of_one_side_reaches_the_other(port: int) -> None:
    payload = os.urandom(8 * MB)
    received = await exchange(port, payload)
    assert received == payload + b"END " + hashlib.sha256(payload).hexdigest().encode()


async def test_connections_are_carried_side_by_side(port: int) -> None:
    payloads = [os.urandom(MB + n) for n in range(6)]
    received = await asyncio.gather(*(exchange(port, p) for p in payloads))
    assert [r[: len(p)] == p for r, p in zip(received, payloads, strict=True)] == [True] * len(payloads)


async def test_without_the_proxy_a_connection_is_closed_and_the_next_one_is_carried(port: int, upstream: Path) -> None:
    moved = upstream.with_name("moved.sock")
    os.rename(upstream, moved)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await reader.read(-1) == b""
    writer.close()
    os.rename(moved, upstream)
    assert (await exchange(port, b"hello")).startswith(b"hello")


async def test_it_says_when_it_listens_and_a_connection_made_then_is_carried(upstream: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    argv = [sys.executable, "-I", "-S", "-B", forwarder.__file__, str(free), str(upstream)]
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(HANG_S):
            said = await process.stdout.read()  # its standard output ends after the one line
        assert said == f"{forwarder.LISTENING}\n".encode()
        assert await exchange(free, b"ping") == b"ping" + b"END " + hashlib.sha256(b"ping").hexdigest().encode()
    finally:
        process.terminate()
        await process.wait()
