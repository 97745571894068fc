"""A worker in a process of its own (`python -m app worker`): startup frozen out of the cyclic collector
and, on Python 3.11, children waited for on pidfds. Runs there go through real bubblewrap to the end,
several at once, their sandboxes' processes waited for and gone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.testing.anthropic_server import Script, Turn, bash, text
from app.testing.stack import Stack, running_stack

RUNS = 3


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    folder = tmp_path / "routines"
    folder.mkdir()
    (folder / "touch.md").write_text("---\nname: touch\nrepo: acme/app\non:\n  api: true\n---\nTouch a file.\n")
    with running_stack(tmp_path, redis_url, routines_dir=folder, worker=False) as s:
        s.github.add_repo("acme/app", s.installation)
        for _ in range(RUNS):
            s.anthropic.add_script(Script([Turn([bash("echo hi > hi.txt && cat hi.txt")]), Turn([text("Done.")])]))
        yield s


def test_runs_in_a_worker_process_of_its_own_reach_their_end_through_bwrap(stack: Stack, tmp_path: Path) -> None:
    env = {**os.environ, **stack.process_env(), "ROUTINES_POLL_DELAY_MS": "20"}
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "app", "worker"], env=env, stdout=log, stderr=log)
        try:
            run_ids = [stack.fire("touch").json()["run_id"] for _ in range(RUNS)]
            runs = [stack.wait(run_id, timeout_s=120) for run_id in run_ids]
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
    log_text = (tmp_path / "worker.log").read_text()
    assert [run["state"] for run in runs] == ["succeeded"] * RUNS, log_text
    for run_id in run_ids:
        outputs = [e["data"]["output"] for e in stack.events(run_id) if e["type"] == "tool.result"]
        assert outputs == ["hi\n"]
    assert worker.returncode == 0, log_text
    assert "could not warm up" not in log_text
    ready = re.search(r"worker ready: (\d+) startup objects frozen; children waited for on (.+)", log_text)
    assert ready is not None and int(ready[1]) > 10_000, log_text
    expected = "pidfds" if sys.version_info < (3, 12) else "asyncio's default"  # 3.12 uses pidfds by itself
    assert ready[2].strip() == expected
