"""Egress proxy throughput: a large HTTPS download direct, through the CONNECT tunnel, and intercepted.

    python bench/proxy_throughput.py [--size-mb 100] [--runs 9]

An HTTPS server (app.testing.https_server, in its own process, with a test CA) serves /bytes/N; curl
downloads it to /dev/null (a) directly, (b) through the proxy's TCP listener as a CONNECT tunnel (host
carries no secret), (c) intercepted: TLS terminated with the run CA, the request parsed and re-sent with
a swapped header, (d) through the proxy's unix socket behind a forwarder on the host, socat (as the sandbox reached the
proxy before) and the sandbox's own forwarder, and (e) from inside a real bubblewrap sandbox, the way the
agent's commands reach the proxy. The speed is curl's own (bytes over its total time). Each mode's runs
are paired with a direct download just before; prints each mode's median MB/s and the median ratio to
its direct partner (target for the sandbox: ≥ 0.85×).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import shlex
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from app.sandbox.bwrap import BwrapSandbox, sandbox_available
from app.sandbox.egress import forwarder
from app.sandbox.egress.ca import RunCA
from app.sandbox.egress.policy import EgressPolicy, SecretBinding, SystemResolver
from app.sandbox.egress.proxy import EgressProxy
from app.sandbox.shell import PersistentShell

HOST = "bench.test"


CURL = ("curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}")


def mb_s(written: str, size: int) -> float:
    """MB/s from curl's `-w` line; refuses a short download."""
    downloaded, seconds = written.split()
    if int(downloaded) != size:
        raise SystemExit(f"curl downloaded {downloaded} of {size} bytes")
    return size / float(seconds) / 1e6


async def curl_mb_s(url: str, cacert: Path, size: int, *extra: str) -> float:
    args = [*CURL, "--cacert", str(cacert), *extra, url]
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode:
        raise SystemExit(f"curl failed ({process.returncode}): {err.decode().strip()}")
    return mb_s(out.decode(), size)


async def sandboxed_mb_s(shell: PersistentShell, url: str, size: int) -> float:
    """The same download by curl inside the sandbox, through its forwarder, with its CA bundle and proxy."""
    result = await shell.run(shlex.join([*CURL, url]), 120)
    if result.exit_code:
        raise SystemExit(f"curl in the sandbox failed ({result.exit_code}): {result.output.strip()}")
    return mb_s(result.output, size)


async def listening(port: int) -> None:
    for _ in range(500):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.close()
        return
    raise SystemExit(f"socat did not listen on port {port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bench(size_mb: int, runs: int, tmp: Path) -> None:
    upstream = RunCA(tmp / "upstream")
    cert, key = upstream.issue(HOST)
    args = [sys.executable, "-m", "app.testing.https_server", "--cert", str(cert), "--key", str(key)]
    server = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    try:
        port = int((await server.stdout.readline() if server.stdout else b"").strip())
        await measure(size_mb, runs, tmp, upstream, port)
    finally:
        server.terminate()
        await server.wait()


async def measure(size_mb: int, runs: int, tmp: Path, upstream: RunCA, port: int) -> None:
    size = size_mb * 1_000_000
    run_ca = RunCA(tmp / "run")
    bundle = run_ca.bundle_path(upstream.cert_path)
    trust = ssl.create_default_context(cafile=str(upstream.cert_path))
    resolver = SystemResolver(overrides={HOST: "127.0.0.1"})

    async def secrets() -> list[SecretBinding]:
        return [SecretBinding("TOKEN", "placeholder-0000", (HOST,), "real-value-1234")]

    tunnel = EgressProxy(EgressPolicy(allow=(HOST,)), ca=run_ca, resolver=resolver, upstream_ca=trust)
    intercept = EgressProxy(
        EgressPolicy(allow=(HOST,), secrets=secrets), ca=run_ca, resolver=resolver, upstream_ca=trust
    )
    _, tunnel_port = await tunnel.start_tcp()
    _, intercept_port = await intercept.start_tcp()
    sock = str(tmp / "egress.sock")
    await tunnel.start_unix(sock)
    url = f"https://{HOST}:{port}/bytes/{size}"
    modes: dict[str, tuple[Path, tuple[str, ...]]] = {
        "direct": (upstream.cert_path, ("--resolve", f"{HOST}:{port}:127.0.0.1")),
        "tunnel (tcp)": (bundle, ("--proxy", f"http://127.0.0.1:{tunnel_port}")),
        "intercept (swap)": (
            bundle,
            ("--proxy", f"http://127.0.0.1:{intercept_port}", "-H", "X-Key: placeholder-0000"),
        ),
    }
    forwarders: list[asyncio.subprocess.Process] = []
    if shutil.which("socat"):
        # socat's default 8 KiB block size halves the throughput; this is how the sandbox ran it before
        port_ = await forward(
            forwarders,
            "socat",
            "-b",
            "1048576",
            "TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
            f"UNIX-CONNECT:{sock}",
        )
        modes["unix + socat (host)"] = (bundle, ("--proxy", f"http://127.0.0.1:{port_}"))
    script = str(Path(forwarder.__file__))
    port_ = await forward(forwarders, sys.executable, "-I", "-S", "-B", script, "{port}", sock)
    modes["unix + forwarder (host)"] = (bundle, ("--proxy", f"http://127.0.0.1:{port_}"))
    downloads: dict[str, Callable[[], Awaitable[float]]] = {
        mode: functools.partial(curl_mb_s, url, ca, size, *extra) for mode, (ca, extra) in modes.items()
    }
    shell = await sandbox_shell(tmp, Path(sock), bundle)
    if shell is not None:
        downloads["sandbox (bwrap)"] = functools.partial(sandboxed_mb_s, shell, url, size)
    try:
        await compare(downloads, runs, size_mb)
    finally:
        if shell is not None:
            await shell.close()
        await tunnel.close()
        await intercept.close()
        for process in forwarders:
            process.terminate()
            await process.wait()


async def compare(downloads: dict[str, Callable[[], Awaitable[float]]], runs: int, size_mb: int) -> None:
    """Each round runs every mode in a shuffled order, each right after a direct download of its own, and
    takes the ratio of the two: the load of the shared cores changes less between neighbours."""
    direct, *others = downloads
    speeds: dict[str, list[float]] = {mode: [] for mode in downloads}
    ratios: dict[str, list[float]] = {mode: [] for mode in others}
    for _ in range(runs):
        for mode in random.sample(others, len(others)):
            base = await downloads[direct]()
            speed = await downloads[mode]()
            speeds[direct].append(base)
            speeds[mode].append(speed)
            ratios[mode].append(speed / base)
    print(f"{size_mb} MB download over HTTPS on 127.0.0.1, {runs} rounds; medians")
    print(f"  {direct:<26} {statistics.median(speeds[direct]):8.1f} MB/s")
    for mode in others:
        print(
            f"  {mode:<26} {statistics.median(speeds[mode]):8.1f} MB/s   {statistics.median(ratios[mode]):5.2f}× direct"
        )


async def forward(started: list[asyncio.subprocess.Process], *argv: str) -> int:
    """Start a forwarder from the proxy's unix socket to a free TCP port (`{port}` in argv); returns the port."""
    port = free_port()
    started.append(await asyncio.create_subprocess_exec(*(a.replace("{port}", str(port)) for a in argv)))
    await listening(port)
    return port


async def sandbox_shell(tmp: Path, sock: Path, bundle: Path) -> PersistentShell | None:
    reason = sandbox_available()
    if reason is not None:
        print(f"no sandbox mode: {reason}", file=sys.stderr)
        return None
    workdir = tmp / "workspace"
    workdir.mkdir()
    return await BwrapSandbox(proxy_socket=sock, ca_bundle=bundle).shell(workdir, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--uvloop", action="store_true", help="run the proxy on uvloop (as the worker may)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.uvloop:
            import uvloop

            uvloop.run(bench(args.size_mb, args.runs, Path(tmp)))
        else:
            asyncio.run(bench(args.size_mb, args.runs, Path(tmp)))


if __name__ == "__main__":
    main()
