"""Run an ASGI app on 127.0.0.1 in a background thread: how tests and benches start test servers."""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from typing import Any

import uvicorn


@dataclass
class Served:
    url: str
    port: int
    _server: uvicorn.Server
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_in_thread(app: Any, port: int | None = None, http: Any = "auto") -> Served:
    """Start `app` with uvicorn on 127.0.0.1 (an ephemeral port unless given); returns once it accepts.
    `http`: uvicorn's HTTP implementation (the web process uses "httptools")."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="auto", http=http)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True, name=f"serve:{port}")
    thread.start()
    for _ in range(500):
        if server.started:
            break
        if not thread.is_alive():
            raise RuntimeError(f"test server on port {port} did not start")
        threading.Event().wait(0.01)
    else:
        raise RuntimeError(f"test server on port {port} did not start within 5 s")
    return Served(url=f"http://127.0.0.1:{port}", port=port, _server=server, _thread=thread)
