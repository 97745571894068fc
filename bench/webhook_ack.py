"""Webhook acknowledgement: our web process vs Probot vs a bare ASGI app that only checks the HMAC.

Each server runs alone as one process (uvicorn with 1 worker; Probot with `probot run`) and gets
the same load: the real `issues.labeled` payload (tests/payloads, sent compact: ~12 KB) with a nonce
field that makes each request a delivery of its own, signed, with a new X-GitHub-Delivery.

- p99 at a fixed rate (default 500 req/s, open loop: latency counts from the scheduled send
  time, so a stall is not hidden) — measured by the asyncio generator in this file;
- maximum req/s — measured with wrk (apt-get install wrk) and a Lua script varying the GUID.

`routines` is the web app served as `routines web` serves it (`app.web.server`: uvicorn's public
Config, uvloop and httptools; the webhook a plain ASGI endpoint behind Starlette's router);
`routines-2` is `routines web --processes 2`, two processes accepting on one socket. Ours does the
full job: signature check, delivery claim, payload kept (LZ4) and the stream entry the workers turn
into jobs, in one round trip to a local Redis with an append-only file (fsync every second).
Probot: `npm install probot` into a temporary folder, a no-op `issues.labeled` app.

    python bench/webhook_ack.py [--rate 500] [--seconds 10] [--rounds 3] [--only routines,routines-2,bare,probot]

The servers are measured one after the other, `--rounds` times (alternating, since this kind of
machine drifts); the ratio to Probot is taken per round, and its median reported.

By default Redis is a fresh server with an append-only file (fsync every second); on a VM with a
slow fsync its stalls show in our p99. `--redis redis://127.0.0.1:6379/12` measures against an
existing server instead.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "bench-webhook-secret"
PAYLOAD = ROOT / "tests" / "payloads" / "issues.labeled.json"
ROUTINE = "---\nname: labelled\nrepo: '*'\non:\n  github:\n    issues: {types: [labeled], labels: [bug]}\n---\nFix.\n"
PROBOT_APP = 'module.exports = (app) => { app.on("issues.labeled", async () => {}); };\n'
WRK_SCRIPT = """
-- Each request a new delivery: a new GUID and a body made unique by a nonce field, signed here with
-- OpenSSL's HMAC through LuaJIT's FFI (the webhook refuses a signed body it took in before: a replay).
local ffi = require("ffi")
ffi.cdef[[
typedef struct evp_md_st EVP_MD;
const EVP_MD *EVP_sha256(void);
unsigned char *HMAC(const EVP_MD *md, const void *key, int key_len, const unsigned char *d, size_t n,
                    unsigned char *out, unsigned int *out_len);
]]
local crypto = ffi.load("libcrypto.so.3")
local key = os.getenv("BENCH_SECRET")
local mac, mac_len = ffi.new("unsigned char[32]"), ffi.new("unsigned int[1]")
local n = 0
local prefix = tostring(math.random(1, 1e9))
local f = io.open(os.getenv("BENCH_BODY"), "rb"); local rest = f:read("*a"):sub(2); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "issues"
request = function()
  n = n + 1
  local body = '{"bench_nonce":"' .. prefix .. '-' .. n .. '",' .. rest
  crypto.HMAC(crypto.EVP_sha256(), key, #key, body, #body, mac, mac_len)
  local hex = {}
  for i = 0, 31 do hex[i + 1] = string.format("%02x", mac[i]) end
  wrk.headers["X-Hub-Signature-256"] = "sha256=" .. table.concat(hex)
  wrk.headers["X-GitHub-Delivery"] = prefix .. "-" .. n
  return wrk.format(nil, nil, nil, body)
end
"""


def compact_body() -> bytes:
    return json.dumps(json.loads(PAYLOAD.read_text()), separators=(",", ":")).encode()


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def unique(body: bytes, nonce: str) -> bytes:
    """`body` made a delivery of its own (a signed body seen before is a replay, refused by the webhook)."""
    return b'{"bench_nonce":"' + nonce.encode() + b'",' + body[1:]


def bare_app() -> Callable[..., Any]:
    """The floor: read the body, check the HMAC, answer 202."""
    key = SECRET.encode()

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        given = dict(scope["headers"]).get(b"x-hub-signature-256", b"")
        ok = hmac.compare_digest(given, b"sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest().encode())
        await send({"type": "http.response.start", "status": 202 if ok else 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def serve(kind: str, port: int, redis_url: str, routines_dir: str) -> None:
    """Run one server in this process (the bench starts it as a subprocess)."""
    import uvicorn

    from app.web import server

    options: dict[str, Any] = {"log_level": "warning", "access_log": False}
    if kind == "bare":
        config = uvicorn.Config(bare_app(), "127.0.0.1", port, loop="uvloop", http="httptools", **options)
    elif kind == "routines-2":  # what `routines web --processes 2` runs
        os.environ.update(REDIS_URL=redis_url, GITHUB_WEBHOOK_SECRET=SECRET, ROUTINES_DIR=routines_dir)
        factory = "app.web.app:from_environment"
        uvicorn.run(factory, host="127.0.0.1", port=port, **server.options(workers=2, factory=True, **options))
        return
    else:
        from app.core.config import Settings
        from app.web.app import create_app

        settings = Settings(redis_url=redis_url, github_webhook_secret=SECRET, routines_dir=Path(routines_dir))
        config = server.config(create_app(settings), "127.0.0.1", port, **options)
    uvicorn.Server(config).run()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not listen within {timeout_s} s")


async def _one(pool: asyncio.Queue[Any], port: int, request: bytes) -> int:
    try:
        reader, writer = pool.get_nowait()
    except asyncio.QueueEmpty:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if length:
        await reader.readexactly(int(length.group(1)))
    elif re.search(rb"(?i)transfer-encoding:\s*chunked", head):
        await reader.readuntil(b"0\r\n\r\n")
    pool.put_nowait((reader, writer))
    return status


async def open_loop(port: int, path: str, body: bytes, rate: float, seconds: float) -> JSONish:
    """Send `rate` req/s for `seconds` on schedule; latency from the scheduled time. Returns p50/p99/max ms."""
    pool: asyncio.Queue[Any] = asyncio.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    prefix = os.urandom(4).hex()

    async def fire(i: int, scheduled: float) -> None:
        data = unique(body, f"{prefix}-{i}")
        request = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"x-github-event: issues\r\nx-github-delivery: {prefix}-{i}\r\nx-hub-signature-256: {sign(data)}\r\n"
            f"content-length: {len(data)}\r\n\r\n"
        ).encode() + data
        status = await _one(pool, port, request)
        latencies.append((time.perf_counter() - scheduled) * 1000)
        statuses[status] = statuses.get(status, 0) + 1

    tasks = []
    start = time.perf_counter() + 0.05
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(i, scheduled)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait()[1].close()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {"p50": pct(0.50), "p99": pct(0.99), "max": latencies[-1], "statuses": statuses}


JSONish = dict[str, Any]


def wrk_max(port: int, path: str, body_file: Path, seconds: float, connections: int) -> JSONish:
    script = body_file.parent / "vary.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_SECRET": SECRET}
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{int(seconds)}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{path}",
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "non_2xx": int(bad.group(1)) if bad else 0}


def start_probot(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    folder = tmp / "probot"
    if not folder.exists():  # installed once per bench run, started once per round
        folder.mkdir()
        (folder / "package.json").write_text('{"name": "noop", "private": true, "type": "commonjs"}')
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "probot"], cwd=folder, check=True)
        (folder / "app.js").write_text(PROBOT_APP)
    from app.testing.github_state import generate_app_key

    env = {**os.environ, "APP_ID": "1", "PRIVATE_KEY": generate_app_key(), "WEBHOOK_SECRET": SECRET,
           "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "warn", "NODE_ENV": "production"}  # fmt: skip
    probot = folder / "node_modules" / ".bin" / "probot"
    return subprocess.Popen([str(probot), "run", "./app.js"], cwd=folder, env=env, stdout=subprocess.DEVNULL)


def measure(name: str, process: subprocess.Popen[bytes], port: int, path: str, args: argparse.Namespace,
            body_file: Path, flush: Callable[[], object], fixed_rate: bool) -> JSONish:  # fmt: skip
    body = compact_body()
    fixed: JSONish = {}

    def reset() -> None:  # once the requests wrk left in flight are answered: a FLUSHDB under them fails them
        time.sleep(0.3)
        flush()

    try:
        wait_listening(port, process)
        wrk_max(port, path, body_file, 2, args.connections)  # warm up (JIT, pools)
        reset()
        if fixed_rate:
            fixed = asyncio.run(open_loop(port, path, body, args.rate, args.seconds))
            reset()
        peak = wrk_max(port, path, body_file, args.seconds, args.connections)
        reset()
    finally:
        process.terminate()
        process.wait(10)
    latency = f"p99 {fixed['p99']:.2f} ms at {args.rate:g}/s {fixed['statuses']}; " if fixed else ""
    print(f"  {name}: {latency}max {peak['rps']:.0f} req/s")
    return {"name": name, **fixed, **peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternate the servers this many times (noise)")
    parser.add_argument("--only", default="routines,routines-2,bare,probot")
    parser.add_argument("--redis", help="use this Redis (its database is flushed) instead of a fresh AOF one")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--routines-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.redis_url, args.routines_dir)
        return
    import redis

    from app.store.embedded import start

    results = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        body_file = tmp / "body.json"
        body_file.write_bytes(compact_body())
        (tmp / "routines").mkdir()
        (tmp / "routines" / "labelled.md").write_text(ROUTINE)
        server = start(tmp) if args.redis is None else None
        url = server.url if server is not None else args.redis
        client = redis.Redis.from_url(url)
        aof = dict(client.config_get("appendonly")).get("appendonly")  # type: ignore[arg-type]
        print(f"payload: {len(body_file.read_bytes())} bytes; Redis at {url}, appendonly={aof}")
        try:
            for round_ in range(args.rounds):
                print(f"round {round_ + 1} of {args.rounds}")
                results.append(run_round(args, tmp, url, body_file, client.flushdb, fixed_rate=round_ == 0))
        finally:
            client.close()
            if server is not None:
                server.stop()
    report(results)


def run_round(args: argparse.Namespace, tmp: Path, url: str, body_file: Path, reset: Callable[[], object],
              fixed_rate: bool) -> dict[str, JSONish]:  # fmt: skip
    """Each server once, one after the other; the p99 at a fixed rate only when `fixed_rate`."""
    measured = {}
    for kind in args.only.split(","):
        port = free_port()
        if kind == "probot":
            process = start_probot(tmp, port)
            path = "/api/github/webhooks"
        else:
            command = [sys.executable, __file__, "--serve", kind, "--port", str(port),
                       "--redis-url", url, "--routines-dir", str(tmp / "routines")]  # fmt: skip
            process = subprocess.Popen(command)
            path = "/webhooks/github"
        measured[kind] = measure(kind, process, port, path, args, body_file, reset, fixed_rate)
    return measured


def report(rounds: list[dict[str, JSONish]]) -> None:
    """p99 from the first round; max req/s as the median over rounds; ratios per round (the machine's noise
    moves servers measured in the same round together), then their median."""
    first = rounds[0]
    print(f"\n{'server':<20} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'median req/s':>13} {'rounds':>24}")
    for name, r in first.items():
        rps = [round_[name]["rps"] for round_ in rounds]
        each = " ".join(f"{x:.0f}" for x in rps)
        print(
            f"{name:<20} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['max']:>8.2f} {statistics.median(rps):>13.0f} {each:>24}"
        )
    if "probot" in first:
        for name in ("routines", "routines-2", "bare"):
            if name in first:
                ratios = [round_[name]["rps"] / round_["probot"]["rps"] for round_ in rounds]
                each = ", ".join(f"{x:.2f}" for x in ratios)
                print(f"{name} / probot max req/s: median {statistics.median(ratios):.2f}x (rounds: {each})")
    bad = sum(r["non_2xx"] for round_ in rounds for r in round_.values())
    print(f"non-2xx answers under wrk: {bad}")


if __name__ == "__main__":
    main()
