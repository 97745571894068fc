"""A small HTTP/1.1 server (TLS optional) standing in for a remote API in tests and benches.

    GET /echo       → 200, JSON {method, path, headers} of the request as received (recorded in `requests`)
    GET /echo/split → the same JSON, sent seven bytes at a time
    GET /echo/head  → 204, each request header sent back as the response header `x-echo-<name>`
    GET /echo/gzip  → the same JSON, gzip-compressed (Content-Encoding: gzip) whatever was asked for
    GET /echo/last  → the JSON of the request before this one (a service that kept what it was sent)
    GET /bytes/N    → 200, N bytes streamed with a Content-Length
    anything else   → 404

Run standalone (used by bench/proxy_throughput.py so the server has its own process):
    python -m app.testing.https_server --port 0 [--cert C --key K]   # prints the port on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import ssl
import sys
from collections.abc import Iterable

import h11

CHUNK = b"x" * (1024 * 1024)


class EchoServer:
    """Serves until `close()`. `requests` holds every /echo request seen, in order."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.requests: list[dict[str, object]] = []
        self.open = 0  # connections open now
        self._opened_or_closed = asyncio.Condition()
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; returns the bound port."""
        self._server = await asyncio.start_server(self._handle, host, port, ssl=self.ssl_context, limit=1 << 20)
        return int(self._server.sockets[0].getsockname()[1])

    async def until_open(self, count: int) -> None:
        """Return once exactly `count` connections are open."""
        async with self._opened_or_closed:
            await self._opened_or_closed.wait_for(lambda: self.open == count)

    async def _count(self, change: int) -> None:
        async with self._opened_or_closed:
            self.open += change
            self._opened_or_closed.notify_all()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        await self._count(1)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(1 << 16))
                elif isinstance(event, h11.Request):
                    await self._answer(conn, event, writer)
                elif isinstance(event, h11.EndOfMessage) and conn.our_state is h11.DONE:
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
        except (OSError, h11.ProtocolError):
            return
        finally:
            await self._count(-1)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, conn: h11.Connection, request: h11.Request, writer: asyncio.StreamWriter) -> None:
        path = request.target.decode()
        if path == "/echo/last" and self.requests:
            body = json.dumps(self.requests[-1]).encode()
            await _send(conn, writer, 200, len(body), [body])
        elif path in ("/echo", "/echo/split", "/echo/head", "/echo/gzip"):
            seen: dict[str, object] = {
                "method": request.method.decode(),
                "path": path,
                "headers": {k.decode(): v.decode("latin-1") for k, v in request.headers},
            }
            self.requests.append(seen)
            body = json.dumps(seen).encode()
            if path == "/echo/split":
                await _send(conn, writer, 200, len(body), [body[i : i + 7] for i in range(0, len(body), 7)])
            elif path == "/echo/head":
                echoed = [(b"x-echo-" + k, v) for k, v in request.headers]
                await _send(conn, writer, 204, 0, [], echoed)
            elif path == "/echo/gzip":
                packed = gzip.compress(body)
                await _send(conn, writer, 200, len(packed), [packed], [(b"content-encoding", b"gzip")])
            else:
                await _send(conn, writer, 200, len(body), [body])
        elif path.startswith("/bytes/") and path[7:].isdigit():
            size = int(path[7:])
            chunks = (CHUNK[: min(len(CHUNK), size - at)] for at in range(0, size, len(CHUNK)))
            await _send(conn, writer, 200, size, chunks)
        else:
            await _send(conn, writer, 404, 10, [b"not found\n"])


async def _send(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    size: int,
    chunks: Iterable[bytes],
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", b"application/octet-stream"), *(extra or [])]
    if status != 204:
        headers.insert(0, (b"content-length", str(size).encode()))
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
    for chunk in chunks:
        writer.write(conn.send(h11.Data(data=chunk)))
        await writer.drain()
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    ctx = None
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)

    async def serve() -> None:
        server = EchoServer(ctx)
        print(await server.start(port=args.port), flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    sys.exit(0)


if __name__ == "__main__":
    main()
