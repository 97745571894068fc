"""Editor latency: each `str_replace_based_edit_tool` call inside the sandbox vs the old host-side editor.

The baseline is the editor as it ran before (the same code, called in the worker through a thread,
as `asyncio.to_thread(editor.run, …)` did); the measured path is the run's hands process inside
bubblewrap, over its pipe. Each works on its own copy of the same file, alternating call by call so
the machine's noise falls on both. Target: p50 added ≤ 5 ms.

    python bench/editor_latency.py [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from app.hands.editor import Editor
from app.sandbox.bwrap import BwrapSandbox, sandbox_available
from app.sandbox.local import LocalSandbox

SOURCE = "".join(f"def f{n}(x):\n    return x + {n}\n\n" for n in range(300))


def calls(path: str, n: int) -> list[dict[str, Any]]:
    """A realistic mix: views (whole and ranged), then an edit and its undo, round after round."""
    mix: list[dict[str, Any]] = [
        {"command": "view", "path": path},
        {"command": "view", "path": path, "view_range": [100, 160]},
        {"command": "str_replace", "path": path, "old_str": "return x + 7\n", "new_str": "return x + 7  # seven\n"},
        {"command": "str_replace", "path": path, "old_str": "return x + 7  # seven\n", "new_str": "return x + 7\n"},
    ]
    return [mix[i % len(mix)] for i in range(n)]


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


def report(label: str, samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    p50, p99 = statistics.median(samples) * 1000, cuts[98] * 1000
    print(f"  {label:28} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms")
    return p50, p99


async def compare(sandbox_name: str, sandbox: Any, workdir: Path, n: int) -> None:
    target, mine = workdir / "module.py", workdir / "module_host.py"
    target.write_text(SOURCE)
    mine.write_text(SOURCE)
    host = Editor(str(workdir))
    hands = await sandbox.hands(workdir, {})
    try:
        started = time.perf_counter()
        await hands.edit({"command": "view", "path": str(target)})
        first = time.perf_counter() - started
        inside: list[float] = []
        before: list[float] = []
        for params, baseline in zip(calls(str(target), n), calls(str(mine), n), strict=True):
            before.append(await timed(lambda p=baseline: asyncio.to_thread(host.run, p)))  # type: ignore[misc]
            inside.append(await timed(lambda p=params: hands.edit(p)))  # type: ignore[misc]
    finally:
        await hands.close()
    print(f"{sandbox_name}: {n} calls each, alternating (first call, which starts the process: {first * 1000:.1f} ms)")
    b50, b99 = report("host-side editor (before)", before)
    i50, i99 = report(f"in the sandbox ({sandbox_name})", inside)
    print(f"  {'added':28} p50 {i50 - b50:7.3f} ms   p99 {i99 - b99:7.3f} ms   ({i50 / b50:.1f}x p50)")
    if sandbox_name == "bwrap":
        print(f"  target p50 added <= 5 ms: {'meets' if i50 - b50 <= 5 else 'MISSES'}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    reason = sandbox_available()
    if reason is not None:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory(prefix="bench-editor-") as tmp:
        for name, sandbox in (("bwrap", BwrapSandbox()), ("local", LocalSandbox())):
            workdir = Path(tmp) / name
            workdir.mkdir()
            await compare(name, sandbox, workdir, args.calls)


if __name__ == "__main__":
    asyncio.run(main())
