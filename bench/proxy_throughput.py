"""Egress proxy throughput: a large HTTPS download direct, through the CONNECT tunnel, and intercepted.

    python bench/proxy_throughput.py [--size-mb 100] [--runs 3]

An HTTPS server (app.testing.https_server, in its own process, with a test CA) serves /bytes/N; curl
downloads it to /dev/null (a) directly, (b) through the proxy's TCP listener as a CONNECT tunnel (host
carries no secret), (c) through the proxy's unix socket behind socat, as the sandbox reaches it, and
(d) intercepted: TLS terminated with the run CA, the request parsed and re-sent with a swapped header.
Prints the median MB/s of each and the ratio to direct (target for the tunnel: ≥ 0.7×).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

from app.sandbox.egress.ca import RunCA
from app.sandbox.egress.policy import EgressPolicy, SecretBinding, SystemResolver
from app.sandbox.egress.proxy import EgressProxy

HOST = "bench.test"


async def curl_mb_s(url: str, cacert: Path, size: int, *extra: str) -> float:
    args = ["curl", "-sS", "-o", "/dev/null", "--cacert", str(cacert), *extra, url]
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(*args, stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode:
        raise SystemExit(f"curl failed ({process.returncode}): {err.decode().strip()}")
    return size / elapsed / 1e6


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
    socat = None
    if shutil.which("socat"):
        socat_port = free_port()
        # socat's default 8 KiB block size halves the throughput; the sandbox's forwarder should copy big blocks too
        socat = await asyncio.create_subprocess_exec(
            "socat", "-b", "1048576", f"TCP-LISTEN:{socat_port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{sock}"
        )
        await listening(socat_port)
        modes["tunnel (unix + socat)"] = (bundle, ("--proxy", f"http://127.0.0.1:{socat_port}"))
    results: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for _ in range(runs):
            for mode, (ca, extra) in modes.items():
                results[mode].append(await curl_mb_s(url, ca, size, *extra))
    finally:
        await tunnel.close()
        await intercept.close()
        if socat is not None:
            socat.terminate()
            await socat.wait()
    direct = statistics.median(results["direct"])
    print(f"{size_mb} MB download over HTTPS on 127.0.0.1, median of {runs} runs")
    for mode, speeds in results.items():
        mb_s = statistics.median(speeds)
        print(f"  {mode:<22} {mb_s:8.1f} MB/s   {mb_s / direct:5.2f}× direct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
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
