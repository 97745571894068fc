"""ROUTINES_LOG_FORMAT=json: a real worker process logs one JSON object per line, with the run's id on the
lines logged while it works on a run, and its own secrets redacted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from app.core.domain import Run, RunState, Trigger
from app.store import queue
from app.store.runs import RedisStore

SECRET = "sk-ant-json-logs-0123456789"  # the model key, which also names the routine's (missing) repository


async def fire(redis_url: str, run: Run) -> None:
    pool = queue.connect(redis_url)
    try:
        await RedisStore(pool).create_run(run)
        await queue.enqueue_run(pool, run.id)
    finally:
        await pool.aclose()


async def state_of(redis_url: str, run_id: str) -> RunState:
    pool = queue.connect(redis_url)
    try:
        return (await RedisStore(pool).get_run(run_id)).state
    finally:
        await pool.aclose()


def test_a_worker_logs_json_lines_with_the_run_id_and_no_secret(tmp_path: Path, redis_url: str) -> None:
    routines = tmp_path / "routines"
    routines.mkdir()
    missing = f"/nonexistent/{SECRET}"
    (routines / "broken.md").write_text(f"---\nname: broken\nrepo: {missing}\n---\nNothing.\n")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "REDIS_URL": redis_url,
        "ROUTINES_DIR": str(routines),
        "ROUTINES_DATA_DIR": str(tmp_path / "data"),
        "ANTHROPIC_API_KEY": SECRET,
        "ROUTINES_SANDBOX": "local",
        "ROUTINES_POLL_DELAY_MS": "20",
        "ROUTINES_LOG_FORMAT": "json",
    }
    run = Run(id="0123456789abcdef", routine="broken", repo=missing, trigger=Trigger("api"))
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "app", "worker"], env=env, stdout=log, stderr=log)
        try:
            asyncio.run(fire(redis_url, run))
            deadline = time.monotonic() + 60
            while not asyncio.run(state_of(redis_url, run.id)).terminal:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)

    output = log_path.read_text()
    lines: list[dict[str, Any]] = [json.loads(line) for line in output.splitlines()]  # every line is JSON
    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    failed = [line for line in lines if line["logger"] == "app.run.runner" and "failed" in line["message"]]
    assert failed and failed[0]["run_id"] == run.id and failed[0]["level"] == "INFO"
    assert "[ANTHROPIC_API_KEY]" in failed[0]["message"]
    assert SECRET not in output
    unsandboxed = [line for line in lines if "UNSANDBOXED" in line["message"]]
    assert unsandboxed and unsandboxed[0]["run_id"] == run.id, "logged from a thread the run job started"
    outside = [line for line in lines if "run_id" not in line]
    assert any("worker stopping" in line["message"] for line in outside), "lines outside a run have no run_id"
