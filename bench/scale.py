"""Scale: many runs fired at once across several worker processes, against a warm run alone.

Everything runs on 127.0.0.1: the test GitHub and Anthropic servers and the web process in this
process's threads, `--workers` worker processes (this file with `--worker`: the real arq worker, plus
a probe that records where runs wait). Each run is scripted: 5 tool turns through real bubblewrap,
then a file change, pushed as a draft PR (`succeeded`). The mirror is warmed first, then the baseline,
a warm run alone (`--alone` of them, one after another), then `--runs` runs fired at once.

Reported per size: runs per minute, fire → first model request p50/p99 and their ratio to alone;
where the time went (queue, in-thread mirror fetch and its lock wait, checkout, sandbox start,
thread-pool queueing, event-loop lag); the CPU the machine spent from the first fire to the last
first request, per start and by whom, and how long those CPU seconds take on this machine's cores (no
scheduling brings the last start below that); GitHub API calls per run; peak RSS per worker and per
concurrent run (worker processes and their sandboxes); Redis bytes per run and per stored webhook
delivery.

    python bench/scale.py [--runs 40 80] [--workers 2] [--max-jobs N] [--skip-fresh-fetch]
                          [--priority-s S] [--spares N] [--dir /dev/shm] [--redis redis://127.0.0.1:6379/13]

`--spares N` keeps N work trees ready per mirror (ROUTINES_SPARES; the workers share one data folder, so
N = the burst's size lets every run of it start from a spare); `--priority-s 0` measures the workers
without starts going first (app.run.starts); `--dir` puts the
data folder (mirrors, work trees) elsewhere: `/dev/shm` leaves the disk out of the figures.
`--skip-fresh-fetch` measures a variant (in the bench's workers only) that fetches each mirror once per
worker process and then uses it as it is: what runs would wait without one fetch per run. `--threads N`
gives each worker a thread pool of N (0: asyncio's default) instead of its own.

Diagnostics: `BENCH_STALLS=0.1` samples the workers' event-loop thread whenever the loop is more than
0.1 s late and prints where it was (`BENCH_STALLS=0`: always, a profile of the loop's thread);
`BENCH_WORKER_LOG=/tmp/scale` keeps the workers' logs (`/tmp/scale.probe-N.log`);
`BENCH_PYSPY=/tmp/spy` records the workers with py-spy for `BENCH_PYSPY_S` seconds (1) from the fire;
`BENCH_MARKS=1` prints the starts' window (first fire, last first request) on CLOCK_MONOTONIC, as
`MARKS <from> <to>`, for a whole-machine profile: `perf record -k CLOCK_MONOTONIC -a -g -- python
bench/scale.py --runs 40`, then `perf report --time <from>,<to> --sort comm` shows who took the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from app.testing.anthropic_server import Script, Turn, bash, text  # noqa: E402
from app.testing.github_hooks import deliver  # noqa: E402
from app.testing.stack import Stack, running_stack  # noqa: E402

TERMINAL = {"succeeded", "no_changes", "failed", "cancelled", "timed_out"}
SECRET = "bench-webhook-secret"
PAYLOAD = ROOT / "tests" / "payloads" / "issues.labeled.json"
ROUTINE = "---\nname: scale\nrepo: acme/app\n---\nLook around, then touch one file.\n"
# heard by the web process (so deliveries are stored), matched by no run: the payload has no such label
LISTENER = (
    "---\nname: listener\nrepo: '*'\non:\n  github:\n    issues: {types: [labeled], labels: [none-such]}\n---\nFix.\n"
)
TOOL_TURNS = [
    "ls | wc -l",
    "cat m1.py",
    "grep -l 'X = 1' *.py | head -3",
    "python3 -c 'print(sum(range(10**5)))'",
    "echo '# touched' >> m1.py",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---------------------------------------------------------------- the worker process (--worker)


def worker_main(probe_file: Path, skip_fresh_fetch: bool) -> None:
    """`python -m app worker`, plus a probe: every thread-pool task's queue wait and duration, by run, and
    the event loop's lag; written to `probe_file` when the worker stops (SIGTERM)."""
    from app.core.config import Settings
    from app.core.logs import RUN_ID
    from app.core.ports import Credentials
    from app.git.mirrors import Mirrors
    from app.worker import worker as worker_module
    from app.worker.worker import close_worker, create_worker

    settings = Settings.from_env()
    # the worker's own pool size; a version from before the worker sized its pool has asyncio's default
    sizing = getattr(worker_module, "thread_pool_size", None)
    threads = int(sizing(settings.max_jobs)) if sizing is not None else None
    if os.environ.get("BENCH_THREADS"):  # --threads: another size, to compare
        threads = int(os.environ["BENCH_THREADS"]) or None
    tasks: list[dict[str, Any]] = []
    lags: list[float] = []

    class ProbedPool(ThreadPoolExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            target = getattr(fn, "args", (fn,))[0] if hasattr(fn, "args") else fn
            row: dict[str, Any] = {"run": RUN_ID.get(), "what": getattr(target, "__qualname__", "?")}
            row["submitted"] = time.time()
            tasks.append(row)

            def timed() -> Any:
                row["started"] = time.time()
                try:
                    return fn(*args, **kwargs)
                finally:
                    row["ended"] = time.time()

            return super().submit(timed)

    class FreshMirrors(Mirrors):
        """Fetches a mirror once per process, then uses it as it is (the bench's no-fetch variant)."""

        def __init__(self, root: Path) -> None:
            super().__init__(root)
            self.fetched: set[str] = set()

        async def ensure(self, url: str, creds: Credentials | None = None, *, since: float | None = None) -> Path:
            if url in self.fetched:
                return self.path_for(url)
            path = await super().ensure(url, creds, since=since)
            self.fetched.add(url)
            return path

    beat = [time.perf_counter()]
    stalls: dict[str, int] = {}
    main_thread = threading.get_ident()

    async def lag_probe() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.05)
            beat[0] = time.perf_counter()
            lags.append(beat[0] - t0 - 0.05)

    def stall_sampler(threshold_s: float) -> None:
        """Where the event loop's thread is while the loop is late (no beat for `threshold_s`; 0: always,
        a profile of the loop's thread). Samples are counted by the innermost frame of our own code."""
        while True:
            time.sleep(0.005)
            if time.perf_counter() - beat[0] <= threshold_s:
                continue
            frame = sys._current_frames().get(main_thread)
            stack = traceback.extract_stack(frame) if frame is not None else []
            if not stack or stack[-1].name == "select":
                continue
            ours = [f for f in stack if "/app/" in f.filename]
            leaf = stack[-1]
            own = f"{ours[-1].filename.split('/app/')[-1]}:{ours[-1].lineno}:{ours[-1].name}" if ours else "-"
            where = f"{own} [{Path(leaf.filename).name}:{leaf.name}]"
            stalls[where] = stalls.get(where, 0) + 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        worker = create_worker(settings, handle_signals=False, own_process=True)
        started = worker.on_startup

        async def startup(ctx: dict[str, Any]) -> None:
            if started is not None:
                await started(ctx)
            # the worker's own pool, the same size, with the probe added
            loop.set_default_executor(ProbedPool(max_workers=threads))
            if skip_fresh_fetch:
                ctx["services"].mirrors = FreshMirrors(settings.data_dir)
            if os.environ.get("BENCH_PRIORITY_S"):  # --priority-s: how long starts go first (0: they do not)
                ctx["services"].starts.priority_s = float(os.environ["BENCH_PRIORITY_S"])

        worker.on_startup = startup
        task = asyncio.create_task(worker.main())
        probe = asyncio.create_task(lag_probe())
        if os.environ.get("BENCH_STALLS"):
            threshold = float(os.environ["BENCH_STALLS"])
            threading.Thread(target=stall_sampler, args=(threshold,), daemon=True).start()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            probe.cancel()
            await close_worker(worker)

    try:
        asyncio.run(main())
    finally:
        top = sorted(stalls.items(), key=lambda kv: -kv[1])[:40]
        probe_file.write_text(json.dumps({"tasks": tasks, "lags": lags, "stalls": top}))


# ---------------------------------------------------------------- the bench process


class RssSampler:
    """Samples each worker process and all its descendants (sandboxes) every `every_s`."""

    def __init__(self, pids: list[int], every_s: float = 0.2) -> None:
        self.pids = pids
        self.every_s = every_s
        self.peak_worker = dict.fromkeys(pids, 0)
        self.peak_tree = dict.fromkeys(pids, 0)
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> dict[int, tuple[int, int]]:
        children: dict[int, list[int]] = {}
        rss: dict[int, int] = {}
        cpu: dict[int, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(stat[1]), []).append(int(entry))
            rss[int(entry)] = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
            cpu[int(entry)] = sum(int(v) for v in stat[11:15]) / tick
        result = {}
        for pid in self.pids:
            tree, pending = 0, [pid]
            while pending:
                p = pending.pop()
                tree += rss.get(p, 0)
                pending += children.get(p, [])
            result[pid] = (rss.get(pid, 0), tree)
            self.cpu[pid] = cpu.get(pid, 0.0)
        return result

    def sample_cpu(self) -> dict[int, float]:
        """CPU seconds of each worker process, with those of its children that ended and were waited for
        (bwrap itself: what runs inside a sandbox's PID namespace is never counted to the worker)."""
        self.sample()
        return dict(self.cpu)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            for pid, (own, tree) in self.sample().items():
                self.peak_worker[pid] = max(self.peak_worker[pid], own)
                self.peak_tree[pid] = max(self.peak_tree[pid], tree)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class CpuTrace:
    """CPU seconds every `every_s`, by whom: the machine (busy), the workers' event-loop threads and their
    other threads, and this process's threads (the web process, the test GitHub, the test Anthropic, and
    the bench's own clients and samplers). What the burst's starts cost is read off it afterwards."""

    def __init__(self, pids: list[int], servers: dict[int, str], every_s: float = 0.02) -> None:
        self.pids = pids
        self.servers = servers  # native thread id → name, of this process's server threads
        self.every_s = every_s
        self.points: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def read(self) -> tuple[float, dict[str, float]]:
        when = time.time()
        loops = workers = 0.0
        for pid in self.pids:
            workers += _stat_cpu(f"/proc/{pid}/stat", children=True)
            loops += _stat_cpu(f"/proc/{pid}/task/{pid}/stat")
        cpu = {"machine": machine_busy()[0], "worker loops": loops, "worker threads and children": workers - loops}
        cpu["stolen"] = machine_stolen()
        own = _own_cpu()
        for tid, name in self.servers.items():
            cpu[name] = _stat_cpu(f"/proc/self/task/{tid}/stat")
            own -= cpu[name]
        cpu["bench"] = own
        times = os.times()  # this process's children that ended: the test GitHub's git processes
        cpu["test GitHub"] = cpu.get("test GitHub", 0.0) + times.children_user + times.children_system
        return when, cpu

    def at(self, when: float) -> dict[str, float]:
        """CPU seconds by whom at `when`, between the two samples around it."""
        later = next((i for i, p in enumerate(self.points) if p[0] >= when), len(self.points) - 1)
        (ta, a), (tb, b) = self.points[max(0, later - 1)], self.points[later]
        share = 0.0 if tb == ta else min(1.0, max(0.0, (when - ta) / (tb - ta)))
        return {k: a[k] + share * (b[k] - a[k]) for k in a}

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.points.append(self.read())

    def __enter__(self) -> CpuTrace:
        self.points.append(self.read())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.points.append(self.read())


def _stat_cpu(path: str, *, children: bool = False) -> float:
    """utime + stime (and, with `children`, those of the children waited for) from a /proc stat file."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11 : 15 if children else 13]) / os.sysconf("SC_CLK_TCK")


def server_threads(stack: Stack) -> dict[int, str]:
    """This process's server threads (app.testing.serve names them serve:<port>) → what they serve."""
    ports = {
        urlsplit(stack.web_url).port: "web",
        urlsplit(stack.settings.github_api_url).port: "test GitHub",
        urlsplit(stack.settings.anthropic_base_url or "").port: "test Anthropic",
    }
    found = {}
    for thread in threading.enumerate():
        port = thread.name.removeprefix("serve:")
        if port.isdigit() and int(port) in ports and thread.native_id is not None:
            found[thread.native_id] = ports[int(port)]
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat; busy includes the time
    the hypervisor took (machine_stolen)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]  # guest time is already in user and nice
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / tick, sum(fields) / tick


def machine_stolen() -> float:
    """CPU seconds the hypervisor gave to others while this machine's CPUs wanted to run (steal)."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    """CPU seconds of this process: the web process and the test servers (threads)."""
    times = os.times()
    return times.user + times.system


def redis_bytes(client: redis.Redis) -> int:
    """MEMORY USAGE of every key in the database (what this installation stores, not the server's overhead)."""
    total = 0
    for key in client.scan_iter(count=1000):
        total += int(cast(int | None, client.memory_usage(key, samples=0)) or 0)
    return total


def api_calls(stack: Stack) -> int:
    """Requests the test GitHub has answered on its REST API (not git's own, over smart HTTP)."""
    return sum(1 for r in list(stack.github.requests) if ".git/" not in r.path)


def mirror_fetches(data_dir: Path) -> int:
    """Fetches the workers' mirrors have started (each mirror counts its own: app.git.layout.fetch_log)."""
    counted = 0
    for log in (data_dir / "mirrors").glob("*.fetches"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            counted += int(log.read_text().split()[0])
    return counted


def first_request_times(stack: Stack, markers: dict[str, str]) -> dict[str, float]:
    """run id → when the model received that run's first request (found by the marker in its first message)."""
    seen: dict[str, float] = {}
    for record in list(stack.anthropic.requests):
        messages = record.body.get("messages") or []
        first = json.dumps(messages[0]) if messages else ""
        for marker, run_id in markers.items():
            if run_id not in seen and marker in first:
                seen[run_id] = record.time
    return seen


def fire_batch(stack: Stack, count: int, tag: str) -> tuple[dict[str, float], dict[str, str]]:
    """Fire `count` runs at once; returns run id → fire time and marker → run id."""
    markers = [f"{tag}-{i}-{uuid.uuid4().hex[:8]}" for i in range(count)]
    barrier = threading.Barrier(count)

    def one(marker: str) -> tuple[str, str, float]:
        barrier.wait()
        started = time.time()
        response = stack.fire("scale", text=marker)
        response.raise_for_status()
        return marker, str(response.json()["run_id"]), started

    with ThreadPoolExecutor(count) as pool:
        fired = list(pool.map(one, markers))
    return {run: t for _m, run, t in fired}, {m: run for m, run, _t in fired}


def wait_for_spares(data_dir: Path, count: int, timeout_s: float = 60.0) -> None:
    """Wait until the mirror's spares are ready (the workers make them in the background after the runs
    alone): the burst measures warm runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        folders = list((data_dir / "mirrors").glob("*.spares"))
        ready = [p for f in folders for p in f.iterdir() if not p.name.startswith(".")]
        if len(ready) >= count:
            return
        time.sleep(0.1)
    print(f"  only {len(ready)} of {count} spares were ready after {timeout_s:g} s", file=sys.stderr)


def wait_all(stack: Stack, run_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Poll every run until it is terminal (an answer without a state is shown, then polled again)."""
    deadline, runs = time.monotonic() + timeout_s, {}
    for run_id in run_ids:
        while True:
            response = stack.get(f"/api/runs/{run_id}")
            run: dict[str, Any] = response.json() if response.status_code == 200 else {}
            if run.get("state") in TERMINAL:
                runs[run_id] = run
                break
            if "state" not in run:
                print(f"  GET /api/runs/{run_id}: {response.status_code} {response.text[:200]}", file=sys.stderr)
            if time.monotonic() > deadline:
                raise SystemExit(f"run {run_id} did not finish in {timeout_s:g} s; last {run.get('state')}")
            time.sleep(0.1)
    return runs


def phases(stack: Stack, run: dict[str, Any], fired: float, received: float | None) -> dict[str, float]:
    """Seconds spent in each phase, from the run's own event log, and from the fire to the run's record
    and from its `model.request` event to the model receiving the request."""
    at: dict[str, float] = {"fired": fired}
    if received is not None:
        at["received"] = received
    for event in stack.events(run["id"]):
        kind, data = event["type"], event.get("data") or {}
        name = f"{kind}:{data.get('state')}" if kind == "run.state" else kind
        at.setdefault(name, float(event["ts"]))
    at["created"] = float(run["created_at"])
    spans = {
        "fire → run recorded": ("fired", "created"),
        "queue": ("created", "run.state:preparing"),
        "repo+token": ("run.state:preparing", "run.token"),
        "workspace": ("run.token", "workspace.ready"),
        "sandbox": ("run.state:running", "model.request"),
        "request → received": ("model.request", "received"),
    }
    return {name: at[end] - at[start] for name, (start, end) in spans.items() if start in at and end in at}


def job_starts(redis_url: str, run_ids: list[str]) -> dict[str, float]:
    """run id → when a worker started its arq job (arq's own record of the job, read through its public Job)."""
    from arq.jobs import Job

    from app.store import queue

    async def read() -> dict[str, float]:
        pool = queue.connect(redis_url)
        try:
            starts = {}
            for run_id in run_ids:
                info = await Job(queue.run_job_id(run_id), pool, _deserializer=queue.loads).result_info()
                if info is not None:
                    starts[run_id] = info.start_time.timestamp()
            return starts
        finally:
            await pool.aclose()

    return asyncio.run(read())


def thread_split(probes: list[dict[str, Any]], firsts: dict[str, float]) -> dict[str, list[float]]:
    """Per run: time queued for a pool thread; in-thread mirror ensure, split into lock wait and hold
    (ensures of one mirror are serial under its lock, across processes: a hold starts when the previous
    one ended or when this one began, whichever is later); checkout."""
    tasks = [t for p in probes for t in p["tasks"] if "ended" in t and t.get("run") in firsts]
    tasks = [t for t in tasks if t["submitted"] < firsts[t["run"]]]
    out: dict[str, list[float]] = {"pool wait": [], "lock wait": [], "fetch (lock held)": [], "checkout": []}
    per_run_pool: dict[str, float] = {}
    for t in tasks:
        per_run_pool[t["run"]] = per_run_pool.get(t["run"], 0.0) + t["started"] - t["submitted"]
    out["pool wait"] = list(per_run_pool.values())
    ensures = sorted((t for t in tasks if "ensure" in t["what"]), key=lambda t: t["ended"])
    previous_end = 0.0
    for t in ensures:
        hold = t["ended"] - max(t["started"], previous_end)
        out["lock wait"].append(t["ended"] - t["started"] - hold)
        out["fetch (lock held)"].append(hold)
        previous_end = t["ended"]
    out["checkout"] = [t["ended"] - t["started"] for t in tasks if "checkout" in t["what"] or "spare" in t["what"]]
    return out


def profile_workers(workers: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    """With BENCH_PYSPY=<prefix>: py-spy records each worker's threads, with full stacks, for
    BENCH_PYSPY_S whole seconds (default 1) from just before the fire (`<prefix>.worker-N.txt`, py-spy's raw
    collapsed stacks; py-spy must be installed)."""
    prefix = os.environ.get("BENCH_PYSPY")
    if not prefix:
        return []
    seconds = os.environ.get("BENCH_PYSPY_S", "1")
    spies = []
    for i, w in enumerate(workers):
        out = f"{prefix}.worker-{i}.txt"
        argv = ["py-spy", "record", "--pid", str(w.pid), "--duration", seconds, "--rate", "1000", "--nonblocking"]
        spies.append(subprocess.Popen([*argv, "--format", "raw", "-o", out], stdout=subprocess.DEVNULL))
    time.sleep(0.3)  # py-spy attaches before the fire
    return spies


def start_worker(stack: Stack, env: dict[str, str], probe: Path, skip: bool) -> subprocess.Popen[bytes]:
    env = {**stack.process_env(), **env, "ROUTINES_POLL_DELAY_MS": "20"}
    argv = [sys.executable, __file__, "--worker", str(probe), *(["--skip-fresh-fetch"] if skip else [])]
    if not os.environ.get("BENCH_WORKER_LOG"):
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(probe.with_suffix(".log"), "wb") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log)


def measure(args: argparse.Namespace, count: int) -> dict[str, Any]:
    client = redis.Redis.from_url(args.redis)
    client.flushdb()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        folder = root / "routines"
        folder.mkdir()
        (folder / "scale.md").write_text(ROUTINE)
        (folder / "listener.md").write_text(LISTENER)
        source = root / "src"
        source.mkdir()
        for i in range(200):
            (source / f"m{i}.py").write_text(f"X = {i}\n")
        overrides = {"github_webhook_secret": SECRET}
        with running_stack(root, args.redis, routines_dir=folder, worker=False, **overrides) as stack:
            stack.github.add_repo("acme/app", stack.installation, source_dir=source)
            turns = [Turn([bash(cmd)]) for cmd in TOOL_TURNS] + [Turn([text("Touched m1.py.")])]
            stack.anthropic.add_script(Script(turns))
            jobs = args.max_jobs or -(-count // args.workers)
            probes = [root / f"probe-{i}.json" for i in range(args.workers)]
            env = {"ROUTINES_MAX_JOBS": str(jobs), "ROUTINES_SPARES": str(args.spares)}
            workers = [start_worker(stack, env, p, args.skip_fresh_fetch) for p in probes]
            try:
                alone: list[float] = []
                for i in range(args.warmup + args.alone):
                    fired, markers = fire_batch(stack, 1, f"alone{i}")
                    run = wait_all(stack, list(fired), 120)
                    firsts = first_request_times(stack, markers)
                    if _check(run):
                        raise SystemExit(f"a run alone did not succeed: {_check(run)}")
                    if i >= args.warmup:
                        alone += [firsts[r] - fired[r] for r in fired]
                time.sleep(1.0)
                wait_for_spares(stack.settings.data_dir, args.spares)
                idle = RssSampler([w.pid for w in workers]).sample()
                before = redis_bytes(client)
                machine_before = machine_busy()
                cpu_before = sum(RssSampler([w.pid for w in workers]).sample_cpu().values()), _own_cpu()
                asked, fetched = api_calls(stack), mirror_fetches(stack.settings.data_dir)
                with (
                    RssSampler([w.pid for w in workers]) as rss,
                    CpuTrace([w.pid for w in workers], server_threads(stack)) as trace,
                ):
                    spies = profile_workers(workers)
                    fired, markers = fire_batch(stack, count, "load")
                    for spy in spies:
                        spy.wait()
                    runs = wait_all(stack, list(fired), 600)
                machine_after = machine_busy()
                github_calls = (api_calls(stack) - asked) / count
                fetches = mirror_fetches(stack.settings.data_dir) - fetched
                cpu_after = sum(RssSampler([w.pid for w in workers]).sample_cpu().values()), _own_cpu()
                failed = _check(runs)
                after = redis_bytes(client)
                firsts = first_request_times(stack, markers)
                latencies = [firsts[r] - fired[r] for r in fired if r in firsts]
                starts = _starts_cost(trace, min(fired.values()), max(firsts.values()))
                if os.environ.get("BENCH_MARKS"):  # the window on CLOCK_MONOTONIC, as `perf -k CLOCK_MONOTONIC` stamps
                    off = time.time() - time.monotonic()
                    print(f"MARKS {min(fired.values()) - off:.3f} {max(firsts.values()) - off:.3f}", flush=True)
                finished = max(float(r["updated_at"]) for r in runs.values())
                per_run = {r: phases(stack, runs[r], fired[r], firsts.get(r)) for r in runs}
                for run_id, started in job_starts(args.redis, list(runs)).items():
                    created = float(runs[run_id]["created_at"])
                    per_run[run_id]["queue: to a worker"] = started - created
                    if "queue" in per_run[run_id]:
                        per_run[run_id]["queue: job start"] = per_run[run_id]["queue"] - (started - created)
                handled = _deliveries(stack, client, args.deliveries, settle_s=3.0)
            finally:
                for w in workers:
                    w.send_signal(signal.SIGTERM)
                for w in workers:
                    try:
                        w.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        w.kill()
            held = _deliveries(stack, client, args.deliveries, settle_s=0.0)
            loaded = [json.loads(p.read_text()) for p in probes if p.exists()]
            if os.environ.get("BENCH_WORKER_LOG"):
                for p in probes:
                    Path(os.environ["BENCH_WORKER_LOG"]).with_suffix(f".{p.stem}.log").write_bytes(
                        p.with_suffix(".log").read_bytes()
                    )
    return {
        "count": count,
        "jobs": jobs,
        "alone": alone,
        "failed": failed,
        "latencies": latencies,
        "per_min": count / (finished - min(fired.values())) * 60,
        "phases": {k: [p[k] for p in per_run.values() if k in p] for k in next(iter(per_run.values()))},
        "threads": thread_split(loaded, firsts),
        "lags": [lag for p in loaded for lag in p["lags"]],
        "stalls": sorted((s for p in loaded for s in p.get("stalls", [])), key=lambda s: -s[1])[:40],
        "rss_worker": max(rss.peak_worker.values()),
        "rss_tree": rss.peak_tree,
        "rss_idle": {pid: tree for pid, (_own, tree) in idle.items()},
        "redis_per_run": (after - before) / count,
        "cpu_machine": (machine_after[0] - machine_before[0]) / count,
        "cpu_workers": (cpu_after[0] - cpu_before[0]) / count,
        "cpu_servers": (cpu_after[1] - cpu_before[1]) / count,
        "machine_busy": (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1]),
        "starts": starts,
        "github_calls": github_calls,
        "fetches": fetches,
        "redis_per_delivery": handled,
        "redis_per_held_delivery": held,
    }


def _starts_cost(trace: CpuTrace, first_fire: float, last_request: float) -> dict[str, float]:
    """CPU seconds spent from the first fire to the last first request, by whom (CpuTrace); "rest" is
    the machine's less all the named ones (and less what the hypervisor stole): the sandboxes (whose
    processes end inside their own PID namespaces and so are never counted as the workers' children),
    Redis, the kernel's own threads."""
    begin, end = trace.at(first_fire), trace.at(last_request)
    spent = {k: end[k] - begin[k] for k in end}
    spent["rest"] = spent["machine"] - sum(v for k, v in spent.items() if k != "machine")
    spanned = trace.points[0][0] <= first_fire and trace.points[-1][0] >= last_request
    return {**spent, "window": last_request - first_fire, "cores": float(os.cpu_count() or 1), "spanned": spanned}


def _deliveries(stack: Stack, client: redis.Redis, count: int, settle_s: float) -> float:
    """Redis bytes per webhook delivery (a 12 KB `issues.labeled` no routine listens to): with the workers
    up, once handled (the claim and the job's kept result); with them down, as held (payload, stream entry,
    claim)."""
    payload = json.loads(PAYLOAD.read_text())
    before = redis_bytes(client)
    url = f"{stack.web_url}/webhooks/github"
    nonce = os.urandom(4).hex()
    for i in range(count):  # each a delivery of its own: a signed body seen before is a replay, not stored
        deliver(stack.github, "issues", {**payload, "bench_nonce": f"{nonce}-{i}"}, url, SECRET)
        answer = stack.github.hook_deliveries[-1]
        if answer.get("status_code") != 202:
            raise SystemExit(f"the web process did not take a delivery in: {answer}")
    time.sleep(settle_s)
    return (redis_bytes(client) - before) / count


def _check(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Why each run that did not succeed ended as it did (printed with the figures, which still count it)."""
    return [f"{r}: {v['state']}: {v.get('error')}" for r, v in runs.items() if v["state"] != "succeeded"]


def report(m: dict[str, Any]) -> None:
    alone, lat = statistics.median(m["alone"]), m["latencies"]
    p50, p99 = statistics.median(lat), percentile(lat, 0.99)
    mib = 1024 * 1024
    print(f"\n{m['count']} runs at once, {m['jobs']} jobs per worker:")
    succeeded = m["count"] - len(m["failed"])
    print(f"  {succeeded} of {m['count']} succeeded; {m['per_min']:.0f} runs/min")
    for reason in m["failed"][:5]:
        print(f"    NOT succeeded: {reason}")
    print(f"  fire → first model request: p50 {p50:.2f} s, p99 {p99:.2f} s; alone {alone:.2f} s", end="")
    print(f" (p50 of {len(m['alone'])})")
    verdict = "met" if p99 <= 10 * alone else "NOT met"
    print(f"  ratio to alone: p50 {p50 / alone:.1f}×, p99 {p99 / alone:.1f}×  (target p99 ≤ 10×: {verdict})")
    print("  where the time before the first request went (p50 / p99 / max, s):")
    rows = {**m["phases"], **m["threads"]}
    for name, values in rows.items():
        if values:
            med, high, top = statistics.median(values), percentile(values, 0.99), max(values)
            print(f"    {name:18} {med:6.2f} {high:6.2f} {top:6.2f}")
    print(
        f"  CPU per run: {m['cpu_machine']:.2f} s on the machine, of which workers {m['cpu_workers']:.2f} s, "
        f"web + test servers (this process) {m['cpu_servers']:.2f} s, and the rest "
        f"{m['cpu_machine'] - m['cpu_workers'] - m['cpu_servers']:.2f} s (sandboxes, Redis, the test GitHub's "
        "git processes, the kernel, stolen time); "
        f"the machine was {m['machine_busy']:.0%} busy during the burst"
    )
    s, count = m["starts"], m["count"]
    parts = ["worker loops", "worker threads and children", "web", "test GitHub", "test Anthropic", "bench", "rest"]
    split = ", ".join(f"{k} {s[k] / count * 1000:.0f}" for k in parts if k in s)
    spent = s["machine"] - s["stolen"]
    floor = spent / s["cores"]
    ours = (spent - s.get("test GitHub", 0) - s.get("test Anthropic", 0) - s["bench"]) / s["cores"]
    print(
        f"  the starts, fire → last first request ({s['window']:.2f} s): the machine was "
        f"{spent / (s['window'] * s['cores']):.0%} busy (and {s['stolen'] / s['window']:.0%} of a core stolen), "
        f"{spent / count * 1000:.0f} ms of CPU per start ({split}); on {s['cores']:.0f} cores that CPU takes "
        f"{floor:.2f} s = {floor / alone:.1f}× alone, without the test servers' and the bench's own "
        f"{ours:.2f} s = {ours / alone:.1f}×"
    )
    if not s["spanned"]:
        print("  (the CPU samples did not span the whole window: the figures above are short)")
    lags = m["lags"]
    if lags:
        print(f"  event-loop lag: p99 {percentile(lags, 0.99) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms")
    per_worker = m["count"] / len(m["rss_tree"])
    growth = [(m["rss_tree"][pid] - m["rss_idle"][pid]) / min(per_worker, m["jobs"]) for pid in m["rss_tree"]]
    print(
        f"  peak RSS per worker process {m['rss_worker'] / mib:.0f} MiB; "
        f"with its sandboxes {max(m['rss_tree'].values()) / mib:.0f} MiB; "
        f"per concurrent run {statistics.mean(growth) / mib:.1f} MiB"
    )
    print(f"  GitHub API calls per run: {m['github_calls']:.1f} (lookups, tokens, the pull request)", end="")
    print(f"; mirror fetches for the whole burst: {m['fetches']}")
    per_run, per_delivery = m["redis_per_run"] / 1024, m["redis_per_delivery"] / 1024
    held = m["redis_per_held_delivery"] / 1024
    print(f"  Redis: {per_run:.1f} KiB per run; per delivery {held:.1f} KiB held, {per_delivery:.1f} KiB once handled")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, nargs="+", default=[40, 80])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-jobs", type=int, default=None, help="ROUTINES_MAX_JOBS (default: runs / workers)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--alone", type=int, default=5)
    parser.add_argument("--deliveries", type=int, default=100)
    parser.add_argument("--skip-fresh-fetch", action="store_true")
    parser.add_argument("--threads", type=int, help="each worker's thread pool (0: asyncio's default)")
    parser.add_argument("--priority-s", type=float, help="how long a run's start goes first (0: not at all)")
    parser.add_argument("--spares", type=int, default=1, help="ROUTINES_SPARES: work trees kept ready per mirror")
    parser.add_argument("--dir", help="where the data folder is made (default: the system's temporary folder)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        os.environ["BENCH_THREADS"] = str(args.threads)
    if args.priority_s is not None:
        os.environ["BENCH_PRIORITY_S"] = str(args.priority_s)
    if args.worker is not None:
        worker_main(args.worker, args.skip_fresh_fetch)
        return
    for count in args.runs:
        result = measure(args, count)
        report(result)
        if os.environ.get("BENCH_STALLS"):
            for where, n in result["stalls"]:
                print(f"  {n:5d} {where}")


if __name__ == "__main__":
    main()
