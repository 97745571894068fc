"""A worker killed between taking a run's job and the run's lease, made with arq alone."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

_TAKER = """
import asyncio, sys
from arq import Worker, func
from app.store import queue

async def run_routine(ctx, run_id):
    print(run_id, flush=True)
    await asyncio.Event().wait()

async def main():
    worker = Worker(  # made on the loop it runs on: arq starts its jobs on the loop it was made on
        functions=[func(run_routine, name=queue.RUN_JOB, max_tries=1)],
        redis_settings=queue.redis_settings(sys.argv[1]),
        job_serializer=queue.dumps,
        job_deserializer=queue.loads,
        poll_delay=0.01,
        handle_signals=False,
    )
    await worker.main()

asyncio.run(main())
"""


def killed_after_taking(redis_url: str, count: int = 1, timeout_s: float = 30) -> list[str]:
    """Start an arq worker (arq alone) whose run job prints its run's id and waits; SIGKILL it once it has
    taken `count` run jobs. Returns their runs: each job is left as a killed worker leaves it, marked in
    progress by arq, its try counted, and its run without a lease."""
    process = subprocess.Popen([sys.executable, "-c", _TAKER, redis_url], stdout=subprocess.PIPE, bufsize=0)
    try:
        assert process.stdout is not None
        out = process.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        printed = b""
        while printed.count(b"\n") < count:
            ready, _, _ = select.select([out], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(out, 4096) if ready else b""
            if not chunk:
                taken = printed.count(b"\n")
                raise TimeoutError(f"the taker took {taken} of {count} run jobs (exit code {process.poll()})")
            printed += chunk
        return printed.decode().split()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
