"""Byte relay for CONNECT tunnels: the two sockets' transports are handed to small protocols that write
each chunk straight to the other side, with flow control, avoiding the stream layer's extra copies.
This is the proxy's throughput path."""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast


class _Half(asyncio.Protocol):
    """Reads one transport and writes to `peer`; pauses the peer's reading while its own writes back up."""

    def __init__(self, peer: asyncio.Transport, ended: asyncio.Future[None], lost: asyncio.Future[None]) -> None:
        self.peer = peer
        self.ended = ended
        self.lost = lost

    def data_received(self, data: bytes) -> None:
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
) -> None:
    """Copy bytes both ways between two stream pairs until both directions end or either side is lost.

    `a_to_b` is sent to `b` first (data already read from `a`). The streams are unusable afterwards;
    both transports are closed on return (and on cancellation).
    """
    loop = asyncio.get_running_loop()
    # Socket transports read and write; uvloop's do not subclass asyncio.Transport, hence a cast, not a check.
    ta, tb = cast(asyncio.Transport, a[1].transport), cast(asyncio.Transport, b[1].transport)
    ended_a, ended_b, lost = loop.create_future(), loop.create_future(), loop.create_future()
    try:
        pending_a = await _take_over(a[0], ta, _Half(tb, ended_a, lost))
        pending_b = await _take_over(b[0], tb, _Half(ta, ended_b, lost))
        if a_to_b + pending_a:
            tb.write(a_to_b + pending_a)
        if pending_b:
            ta.write(pending_b)
        ta.resume_reading()
        tb.resume_reading()
        both = asyncio.gather(ended_a, ended_b)
        await asyncio.wait([both, lost], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for transport in (ta, tb):
            with contextlib.suppress(RuntimeError):
                transport.close()
