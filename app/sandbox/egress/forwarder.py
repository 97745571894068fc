"""The sandbox's end of its way out: listens on 127.0.0.1:PORT in the sandbox's network namespace and
splices every connection to the egress proxy's unix socket.

    python3 -I -S -B forwarder.py PORT SOCKET

It runs inside the sandbox, as the agent's own user, on the sandbox's `python3`: this file imports the
standard library only, so it can run by itself, bound into the sandbox read-only. It grants nothing the
agent lacks (the socket is bound in either way); it only carries bytes, with `os.splice` so the kernel
moves them by page reference instead of copying them through the process as socat's loop does. Exits
with 3 when this Python has no `os.splice`, so the caller can fall back to socat. Once it listens it writes
`LISTENING` and a newline to its standard output and closes it, so the caller waits for that line instead
of polling.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time

# As much as the pipe takes: a default pipe (64 KiB); a bigger one measured no faster and would spend the
# user's pipe budget (fs.pipe-user-pages-soft), which the worker shares.
SPLICE_BYTES = 1024 * 1024
UNIX_SNDBUF_BYTES = 4 * 1024 * 1024  # a unix socket's buffer does not grow as TCP's does; capped by wmem_max
THREAD_STACK_BYTES = 256 * 1024
NO_SPLICE = 3
LISTENING = "listening"


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Move bytes from `src` to `dst` (blocking sockets) until `src` ends, then end `dst`'s writing side.
    On an error both sockets are shut down, which also ends the opposite pump."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        while moved := os.splice(src.fileno(), w, SPLICE_BYTES, flags=os.SPLICE_F_MOVE):
            while moved:
                moved -= os.splice(r, dst.fileno(), moved, flags=os.SPLICE_F_MOVE)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    finally:
        os.close(r)
        os.close(w)


def carry(client: socket.socket, path: str) -> None:
    """Relay `client` to a new connection to the unix socket `path`, both ways, then close both."""
    with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
        try:
            upstream.connect(path)
        except OSError:
            return
        with contextlib.suppress(OSError):
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SNDBUF_BYTES)
        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        try:
            back.start()
        except RuntimeError:  # the sandbox's process limit: this connection fails, the next may not
            return
        pump(client, upstream)
        back.join()


def serve(listener: socket.socket, path: str) -> None:
    """Accept on `listener` forever, each connection carried by two threads of its own (one per direction)."""
    threading.stack_size(THREAD_STACK_BYTES)
    while True:
        try:
            client, _ = listener.accept()
        except OSError:  # out of file descriptors, or the client left first: wait, then go on accepting
            time.sleep(0.01)
            continue
        try:
            threading.Thread(target=carry, args=(client, path), daemon=True).start()
        except RuntimeError:
            client.close()


def main(argv: list[str]) -> int:
    if not hasattr(os, "splice"):
        return NO_SPLICE
    port, path = int(argv[1]), argv[2]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    with contextlib.suppress(OSError):  # nobody may be reading: the caller then did not wait
        os.write(1, f"{LISTENING}\n".encode())
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    serve(listener, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
