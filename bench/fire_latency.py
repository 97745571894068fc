"""Fire → first model request: how long a routine waits between the HTTP call and the model's first request.

Everything runs on 127.0.0.1 with instant test servers (GitHub, Anthropic), the web process in a thread
and one real worker process (`python -m app worker`). The mirror is warmed by a few runs first.
The baseline, measured in the same run, is one GET /healthz round trip (client → web → Redis → client).

    python bench/fire_latency.py [--runs 50] [--redis redis://127.0.0.1:6379/9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from app.testing.anthropic_server import Script, Turn, text
from app.testing.stack import running_stack


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_worker(settings_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env}
    return subprocess.Popen(
        [sys.executable, "-m", "app", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args()
    redis.Redis.from_url(args.redis).flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "routines"
        folder.mkdir()
        (folder / "bench.md").write_text("---\nname: bench\nrepo: acme/app\n---\nLook around.\n")
        source = root / "src"
        source.mkdir()
        for i in range(200):
            (source / f"m{i}.py").write_text(f"X = {i}\n")
        with running_stack(root, args.redis, routines_dir=folder, worker=False) as stack:
            stack.github.add_repo("acme/app", stack.installation, source_dir=source)
            stack.anthropic.add_script(Script([Turn([text("Nothing to change.")])]))
            s = stack.settings
            worker = start_worker(
                {
                    "REDIS_URL": args.redis,
                    "GITHUB_API_URL": s.github_api_url,
                    "GITHUB_APP_ID": s.github_app_id or "",
                    "GITHUB_APP_PRIVATE_KEY": s.github_app_private_key or "",
                    "ANTHROPIC_API_KEY": s.anthropic_api_key or "",
                    "ANTHROPIC_BASE_URL": s.anthropic_base_url or "",
                    "ROUTINES_DIR": str(folder),
                    "ROUTINES_DATA_DIR": str(s.data_dir),
                    "ROUTINES_PUBLIC_URL": s.public_url,
                    "ROUTINES_API_TOKEN": s.api_token or "",
                }
            )
            try:
                latencies: list[float] = []
                for i in range(args.warmup + args.runs):
                    before = len(stack.anthropic.requests)
                    started = time.time()
                    run_id = stack.fire("bench").json()["run_id"]
                    run = stack.wait(run_id, timeout_s=60)
                    if run["state"] != "no_changes":
                        raise SystemExit(f"run {run_id} ended {run['state']}: {run['error']}")
                    first = stack.anthropic.requests[before].time
                    if i >= args.warmup:
                        latencies.append((first - started) * 1000)
                health: list[float] = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    stack.client.get(f"{stack.web_url}/healthz")
                    health.append((time.perf_counter() - t0) * 1000)
            finally:
                worker.terminate()
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    raise
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    base = statistics.median(health)
    print(f"fire → first model request over {len(latencies)} runs (warm mirror):")
    print(f"  p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   target p50 ≤ 300 ms: {'met' if p50 <= 300 else 'NOT met'}")
    print(f"  baseline GET /healthz p50 {base:.2f} ms → fire latency is {p50 / base:.0f}× one web round trip")


if __name__ == "__main__":
    main()
