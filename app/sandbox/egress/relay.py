"""Byte relay for CONNECT tunnels; this is the proxy's throughput path.

Where the platform has `os.splice` and both ends are plain sockets, the sockets leave their transports
and the kernel moves the bytes between them (`splice.py`). Otherwise the two transports are handed to
small protocols that write each chunk straight to the other side, with flow control, avoiding the
stream layer's extra copies. Either way the tunnel is closed once no byte has moved for its idle limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import cast

from app.sandbox.egress.idle import Idle
from app.sandbox.egress.splice import available, splice_relay

log = logging.getLogger(__name__)


class _Half(asyncio.Protocol):
    """Reads one transport and writes to `peer`; pauses the peer's reading while its own writes back up."""

    def __init__(
        self, peer: asyncio.Transport, ended: asyncio.Future[None], lost: asyncio.Future[None], idle: Idle
    ) -> None:
        self.peer = peer
        self.ended = ended
        self.lost = lost
        self.idle = idle

    def data_received(self, data: bytes) -> None:
        self.idle.touch()
        self.peer.write(data)

    def eof_received(self) -> bool:
        if self.peer.can_write_eof() and not self.peer.is_closing():
            self.peer.write_eof()
        _finish(self.ended)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        _finish(self.ended)
        _finish(self.lost)

    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        if not self.peer.is_closing():
            self.peer.resume_reading()


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _take_over(reader: asyncio.StreamReader, transport: asyncio.Transport, protocol: asyncio.Protocol) -> bytes:
    """Move `transport` from its stream to `protocol`; returns the bytes the stream had buffered but not read."""
    transport.pause_reading()
    transport.set_protocol(protocol)
    reader.feed_eof()
    return await reader.read()


async def relay(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    a_to_b: bytes = b"",
    *,
    idle_s: float | None = None,
) -> None:
    """Copy bytes both ways between two stream pairs until both directions end, either side is lost, or
    no byte has moved for `idle_s` (None: no limit).

    `a_to_b` is sent to `b` first (data already read from `a`). The streams are unusable afterwards;
    both transports are closed on return (and on cancellation).
    """
    idle = Idle(idle_s)
    if available() and _plain_socket(a[1]) and _plain_socket(b[1]):
        await _relay_spliced(a, b, a_to_b, idle)
        return
    loop = asyncio.get_running_loop()
    # Socket transports read and write; uvloop's do not subclass asyncio.Transport, hence a cast, not a check.
    ta, tb = cast(asyncio.Transport, a[1].transport), cast(asyncio.Transport, b[1].transport)
    ended_a, ended_b, lost = loop.create_future(), loop.create_future(), loop.create_future()
    try:
        pending_a = await _take_over(a[0], ta, _Half(tb, ended_a, lost, idle))
        pending_b = await _take_over(b[0], tb, _Half(ta, ended_b, lost, idle))
        if a_to_b + pending_a:
            tb.write(a_to_b + pending_a)
        if pending_b:
            ta.write(pending_b)
        ta.resume_reading()
        tb.resume_reading()
        if not await idle.first([asyncio.gather(ended_a, ended_b), lost]):
            log.debug("egress tunnel closed after %s s without traffic", idle_s)
    finally:
        for transport in (ta, tb):
            with contextlib.suppress(RuntimeError):
                transport.close()


def _plain_socket(writer: asyncio.StreamWriter) -> bool:
    """Whether `writer` writes straight to a socket (no TLS in between)."""
    return writer.get_extra_info("socket") is not None and writer.get_extra_info("sslcontext") is None


async def _detach(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[socket.socket, bytes]:
    """The stream's socket as a socket of our own (the transport closed, its written bytes sent first), and the
    bytes the stream had read but not handed out."""
    transport = writer.transport
    transport.set_write_buffer_limits(high=0)
    await writer.drain()
    pending = await _take_over(reader, cast(asyncio.Transport, transport), asyncio.Protocol())
    sock = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
    transport.close()
    sock.setblocking(False)
    return sock, pending


async def _relay_spliced(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    a_to_b: bytes,
    idle: Idle,
) -> None:
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    try:
        sock_a, pending_a = await _detach(*a)
        sockets.append(sock_a)
        sock_b, pending_b = await _detach(*b)
        sockets.append(sock_b)
        if a_to_b + pending_a:
            await loop.sock_sendall(sock_b, a_to_b + pending_a)
        if pending_b:
            await loop.sock_sendall(sock_a, pending_b)
        await splice_relay(sock_a, sock_b, idle)
    finally:
        for transport in (a[1].transport, b[1].transport):
            with contextlib.suppress(RuntimeError):
                transport.close()
        for sock in sockets:
            sock.close()
