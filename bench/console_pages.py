"""The console with a long history: the runs page over 10,000 stored runs, and a 5,000-event run's page.

    python bench/console_pages.py [--runs 10000] [--events 5000] [--requests 200] [--redis redis://127.0.0.1:6379/10]

Stores the runs (one routine in ten, mixed states and repositories) and one run with `--events` events
in the given Redis database (flushed), serves the web app with uvicorn on 127.0.0.1, and times, from a
client on the same machine, alternating with the baseline: GET /runs (first page), GET /runs filtered
by a repository, the run's page, and the time to the first event bytes of its live log (the SSE stream
the page opens). Baseline in the same run: GET /healthz (one Redis round trip). Targets: runs page
p50 ≤ 50 ms; the run page's first events ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from redis import asyncio as aioredis

from app.core.config import Settings
from app.core.domain import Event, Run, RunState, Trigger
from app.testing.serve import serve_in_thread
from app.web.app import create_app

STATES = [RunState.SUCCEEDED] * 6 + [RunState.NO_CHANGES, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT]


async def fill(redis_url: str, runs: int, events: int) -> str:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    start = time.time() - runs * 60
    async with client.pipeline(transaction=False) as pipe:
        for n in range(runs):
            run = Run(
                id=f"{int((start + n * 60) * 1000):013x}{n:08x}",
                routine=f"routine-{n % 10}",
                repo=f"acme/repo-{n % 25}",
                trigger=Trigger("api" if n % 3 else "schedule"),
                state=STATES[n % len(STATES)],
                created_at=start + n * 60,
                updated_at=start + n * 60 + 90,
                cost_usd=0.01 * (n % 7),
            )
            score = int(run.created_at * 1000)
            pipe.set(f"routines:run:{run.id}", json.dumps(run.to_json()))
            pipe.zadd("routines:runs", {run.id: score})
            pipe.zadd(f"routines:runs:{run.routine}", {run.id: score})
            pipe.zadd(f"routines:runs-by-repo:{run.repo}", {run.id: score})
            pipe.zadd(f"routines:runs-by-trigger:{run.trigger.kind}", {run.id: score})
        await pipe.execute()
    big = f"{int(time.time() * 1000):013x}ffffffff"
    run = Run(id=big, routine="routine-0", repo="acme/repo-0", trigger=Trigger("api"), state=RunState.SUCCEEDED)
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(f"routines:run:{big}", json.dumps(run.to_json()))
        pipe.zadd("routines:runs", {big: int(time.time() * 1000)})
        stream = f"routines:events:{big}"
        for n in range(events):
            data = {"id": f"t{n}", "name": "bash", "output": f"line {n}\n" * 20, "is_error": False}
            event = Event("tool.result", data)
            pipe.xadd(stream, {"type": event.type, "ts": repr(event.ts), "data": json.dumps(event.data)})
        pipe.xadd(stream, {"type": "run.state", "ts": repr(time.time()), "data": '{"state": "succeeded"}'})
        await pipe.execute()
    await client.aclose()
    return big


def timed_get(client: httpx.Client, path: str) -> float:
    began = time.perf_counter()
    answer = client.get(path)
    answer.raise_for_status()
    return (time.perf_counter() - began) * 1000


def first_events(client: httpx.Client, path: str) -> float:
    began = time.perf_counter()
    with client.stream("GET", path, headers={"accept": "text/event-stream"}) as answer:
        for chunk in answer.iter_raw():
            if b"data: " in chunk:
                return (time.perf_counter() - began) * 1000
    raise RuntimeError("the stream ended without an event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/10")
    args = parser.parse_args()
    began = time.perf_counter()
    big = asyncio.run(fill(args.redis, args.runs, args.events))
    print(f"{args.runs} runs and one run of {args.events} events stored in {time.perf_counter() - began:.1f} s")
    folder = Path(tempfile.mkdtemp(prefix="bench-console-"))
    (folder / "routines").mkdir()
    settings = Settings(redis_url=args.redis, routines_dir=folder / "routines", data_dir=folder / "data")
    with serve_in_thread(create_app(settings), http="httptools") as served, httpx.Client(
        base_url=served.url, timeout=30
    ) as client:
        cases: dict[str, Callable[[], float]] = {
            "GET /healthz (baseline)": lambda: timed_get(client, "/healthz"),
            "GET /runs": lambda: timed_get(client, "/runs"),
            "GET /runs?repo=acme/repo-7": lambda: timed_get(client, "/runs?repo=acme/repo-7"),
            "GET /runs?state=failed": lambda: timed_get(client, "/runs?state=failed"),
            f"GET /runs/<{args.events}-event run>": lambda: timed_get(client, f"/runs/{big}"),
        }
        for measure in cases.values():  # warm up
            measure()
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.requests):
            for name, measure in cases.items():
                samples[name].append(measure())
        # The live log last, on its own: a client that leaves after the first event leaves the server
        # writing into a closed stream for a moment, which would fall on the next request's timing.
        samples["its live log: first event"] = [
            first_events(client, f"/api/runs/{big}/events") for _ in range(max(10, args.requests // 5))
        ]
    base = statistics.median(samples["GET /healthz (baseline)"])
    print(f"{'request':40} {'p50 ms':>8} {'p99 ms':>8} {'÷ baseline':>11}")
    for name, values in samples.items():
        values.sort()
        p50, p99 = statistics.median(values), values[int(len(values) * 0.99) - 1]
        print(f"{name:40} {p50:8.2f} {p99:8.2f} {p50 / base:10.1f}x")
    print("targets: runs page p50 ≤ 50 ms; the run page's first events ≤ 100 ms")


if __name__ == "__main__":
    main()
