"""The worker's side of the hands process: a helper that dies, hangs or breaks the framing costs one call."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from app.core.errors import SandboxError, ToolError
from app.sandbox.hands import HandsProcess
from app.sandbox.local import LocalSandbox

READ_ONE = "import sys; sys.stdin.buffer.read(4)"


def helper(code: str) -> HandsProcess:
    return HandsProcess([sys.executable, "-c", code])


async def test_a_helper_that_dies_is_an_error_and_the_next_call_starts_a_new_one() -> None:
    process = helper(f"{READ_ONE}; sys.stderr.write('boom: the helper broke\\n'); sys.exit(3)")
    for attempt in (1, 2):
        with pytest.raises(SandboxError, match=r"stopped .*boom: the helper broke"):
            await process.request({"op": "ping"}, timeout_s=10)
        assert process.starts == attempt
    await process.close()


async def test_a_helper_that_never_answers_is_killed_after_the_timeout() -> None:
    process = helper("import time; time.sleep(600)")
    with pytest.raises(SandboxError, match=r"did not answer within 0\.3 s"):
        await process.request({"op": "ping"}, timeout_s=0.3)
    await process.close()


async def test_an_answer_over_the_limit_is_refused_without_reading_it() -> None:
    process = helper(f"{READ_ONE}; sys.stdout.buffer.write((2**31).to_bytes(4, 'big')); sys.stdout.flush()")
    with pytest.raises(SandboxError, match="over the"):
        await process.request({"op": "ping"}, timeout_s=10)
    await process.close()


async def test_the_real_hands_come_back_after_being_killed(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello\n")
    hands = await LocalSandbox().hands(tmp_path, {})
    try:
        assert "hello" in await hands.edit({"command": "view", "path": "a.txt"})
        [pid] = [p for p in _pids_with(b"app.hands.server") if str(tmp_path).encode() in _cmdline(p)]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ToolError):
            await hands.edit({"command": "view", "path": "a.txt"})
        assert "hello" in await hands.edit({"command": "view", "path": "a.txt"}), "started again"
    finally:
        await hands.close()
    assert not (tmp_path.with_name(tmp_path.name + ".stage")).exists(), "its staging folder is removed"


def _pids_with(text: bytes) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and text in _cmdline(int(p))]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
