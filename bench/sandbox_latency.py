"""Added latency of a sandboxed command versus the same command unsandboxed (target: ≤ 20 ms at p50).

    python bench/sandbox_latency.py [--runs 300] [--spawns 100]

Measures (1) `true` and `/usr/bin/true` through the run's persistent shell: BwrapSandbox versus LocalSandbox, which is
what every bash tool call costs, and (2) a fresh process: `bwrap <the sandbox's full command line>
true` versus plain `true`, which is what a shell restart (after a timeout) costs. Prints p50/p99 of
each, the added milliseconds and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from app.core.ports import Sandbox
from app.sandbox.bwrap import BwrapSandbox, sandbox_available
from app.sandbox.local import LocalSandbox
from app.sandbox.shell import DEFAULT_PATH


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return statistics.median(samples) * 1000, cuts[98] * 1000


async def timed(runs: int, action: Callable[[], Awaitable[object]]) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await action()
        samples.append(time.perf_counter() - start)
    return samples


async def through_shell(sandbox: Sandbox, workdir: Path, command: str, runs: int) -> list[float]:
    shell = await sandbox.hands(workdir, {})
    try:
        await timed(10, lambda: shell.run(command, 10))
        return await timed(runs, lambda: shell.run(command, 10))
    finally:
        await shell.close()


async def spawn(argv: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, env={"PATH": DEFAULT_PATH}, stdin=subprocess.DEVNULL)
    if await proc.wait() != 0:
        raise SystemExit(f"{argv[0]} failed with exit code {proc.returncode}")


def report(label: str, sandboxed: list[float], plain: list[float]) -> None:
    s50, s99 = percentiles(sandboxed)
    p50, p99 = percentiles(plain)
    print(f"{label}")
    print(f"  bwrap   p50 {s50:8.2f} ms   p99 {s99:8.2f} ms")
    print(f"  plain   p50 {p50:8.2f} ms   p99 {p99:8.2f} ms")
    print(f"  added   p50 {s50 - p50:8.2f} ms   p99 {s99 - p99:8.2f} ms")
    print(f"  ratio   p50 {s50 / p50:8.2f}x    p99 {s99 / p99:8.2f}x")


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="commands through each persistent shell")
    parser.add_argument("--spawns", type=int, default=100, help="fresh processes of each kind")
    args = parser.parse_args()
    reason = sandbox_available()
    if reason is not None:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp:
        workdir = Path(tmp)
        bwrap = BwrapSandbox()
        for command, what in (("true", "the builtin"), ("/usr/bin/true", "fork + exec")):
            sandboxed = await through_shell(bwrap, workdir, command, args.runs)
            local = await through_shell(LocalSandbox(), workdir, command, args.runs)
            report(f"`{command}` ({what}) through the persistent shell ({args.runs} runs)", sandboxed, local)
        fresh = bwrap.argv(workdir, {}, command=["true"])
        await timed(5, lambda: spawn(fresh))
        spawned = await timed(args.spawns, lambda: spawn(fresh))
        plain = await timed(args.spawns, lambda: spawn(["true"]))
        report(f"a fresh `true` process ({args.spawns} runs)", spawned, plain)
        print(f"  bwrap command line: {len(fresh)} arguments")


if __name__ == "__main__":
    asyncio.run(main())
