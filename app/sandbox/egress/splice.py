"""Zero-copy byte relay between two sockets: `os.splice` through a pipe, driven by the event loop.

The kernel moves the bytes socket → pipe → socket by page reference; the process never copies them.
Linux only; `available()` says whether it can be used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from app.sandbox.egress.idle import Idle

log = logging.getLogger(__name__)

# As much as the pipe takes: a default pipe (64 KiB); a bigger one measured no faster and would spend the
# user's pipe budget (fs.pipe-user-pages-soft), which the sandbox shares.
SPLICE_BYTES = 1024 * 1024
# A unix socket's buffer does not grow as TCP's does; at its 208 KiB default the relay waited on it often
# enough to double its CPU time. The kernel caps this at net.core.wmem_max.
UNIX_SNDBUF_BYTES = 4 * 1024 * 1024
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


def available() -> bool:
    """Whether this platform has os.splice (Linux, Python ≥ 3.10)."""
    return hasattr(os, "splice") and hasattr(os, "SPLICE_F_NONBLOCK")


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    future: asyncio.Future[None] = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(fd, _settle, future)
    try:
        await future
    finally:
        remove(fd)


async def _pump(loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket, idle: Idle) -> None:
    """Move bytes from `src` to `dst` until `src` ends, then end `dst`'s writing side."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        while True:
            try:
                moved = os.splice(src.fileno(), w, SPLICE_BYTES, flags=_FLAGS)
            except BlockingIOError:
                await _ready(loop, src.fileno(), write=False)
                continue
            if moved == 0:
                break
            idle.touch()
            while moved:
                try:
                    moved -= os.splice(r, dst.fileno(), moved, flags=_FLAGS)
                except BlockingIOError:
                    await _ready(loop, dst.fileno(), write=True)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
    finally:
        os.close(r)
        os.close(w)


async def splice_relay(a: socket.socket, b: socket.socket, idle: Idle | None = None) -> None:
    """Copy both ways between the non-blocking sockets `a` and `b` until both directions end, one fails, or
    nothing has moved for `idle`'s limit.

    The caller owns the sockets (and closes them); nothing else may read or write them meanwhile."""
    idle = idle or Idle(None)
    loop = asyncio.get_running_loop()
    for sock in (a, b):
        if sock.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SNDBUF_BYTES)
    tasks = [asyncio.ensure_future(_pump(loop, a, b, idle)), asyncio.ensure_future(_pump(loop, b, a, idle))]
    both = asyncio.gather(*tasks)  # done at the first failure, as asyncio.wait's FIRST_EXCEPTION
    try:
        if await idle.first([both]):
            both.result()
        else:
            log.debug("egress tunnel closed after %s s without traffic", idle.limit_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if both.done() and not both.cancelled():
            both.exception()  # retrieved: a pump cancelled here is no unhandled error
