"""Run every benchmark, one after another, and print what each reports.

    python bench/run.py                  # all
    python bench/run.py fire_latency     # some, by name

Each benchmark measures its own baseline in the same run and prints ratios against it: the machine is
shared and noisy, so absolute numbers from different runs are not comparable.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES: dict[str, list[str]] = {
    "fire_latency": ["--runs", "50"],
    "workspace_prepare": ["--files", "20000", "--runs", "5"],
    "sandbox_latency": [],
    "proxy_throughput": [],
    "webhook_ack": [],
    "scheduler_tick": [],
    "agent_overhead": [],
    "editor_latency": [],
    "console_pages": [],
    "environment_ready": [],
    "scale": ["--runs", "40", "80"],
}


def main(names: list[str]) -> int:
    chosen = names or [n for n in BENCHES if (HERE / f"{n}.py").exists()]
    failed = 0
    for name in chosen:
        if name not in BENCHES:
            print(f"unknown benchmark {name!r}; known: {', '.join(BENCHES)}", file=sys.stderr)
            return 2
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        done = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *BENCHES[name]], cwd=HERE.parent)
        print(f"({name}: {time.monotonic() - started:.0f} s, exit {done.returncode})", flush=True)
        failed += done.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
