"""LocalSandbox: a real bash per test, driven the way the bash tool drives it."""

from __future__ import annotations

import asyncio
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.sandbox.local import LocalSandbox, LocalShell


@pytest.fixture
async def shell(tmp_path: Path) -> AsyncIterator[LocalShell]:
    sh = await LocalSandbox(max_output_bytes=2_000).shell(tmp_path, {"GREETING": "hello"})
    yield sh
    await sh.close()


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


async def _gone(pid: int) -> bool:
    """Whether `pid` has exited (or is a zombie), waiting up to 10 s for the kernel to finish it."""
    for _ in range(200):
        if _dead(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_state_survives_between_commands(shell: LocalShell, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    await shell.run("cd sub && export COLOUR=blue", 10)
    result = await shell.run("pwd; echo $COLOUR $GREETING", 10)
    assert result.output == f"{tmp_path / 'sub'}\nblue hello\n"
    assert result.exit_code == 0


async def test_environment_is_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTINES_TEST_SECRET", "s3cr3t-value")
    sh = await LocalSandbox().shell(tmp_path, {"EXTRA": "1"})
    try:
        result = await sh.run("env", 10)
    finally:
        await sh.close()
    names = {line.split("=", 1)[0] for line in result.output.splitlines()}
    assert "s3cr3t-value" not in result.output
    assert {"PATH", "HOME", "LANG", "TERM", "EXTRA"} <= names
    assert "TERM=dumb" in result.output
    assert f"HOME={os.environ.get('HOME')}\n" not in result.output


async def test_exit_codes_stderr_and_stdin(shell: LocalShell) -> None:
    failed = await shell.run("echo out; echo err >&2; exit_code_test() { return 7; }; exit_code_test", 10)
    assert failed.exit_code == 7
    assert failed.output == "out\nerr\n"
    reading = await shell.run("cat; read -r line; echo done", 10)
    assert (reading.output, reading.exit_code, reading.timed_out) == ("done\n", 0, False)


async def test_syntax_error_does_not_break_the_shell(shell: LocalShell) -> None:
    broken = await shell.run('echo "unclosed', 10)
    assert broken.exit_code == 2
    assert "unexpected EOF" in broken.output
    assert (await shell.run("echo ')' still fine", 10)).output == ") still fine\n"


async def test_timeout_kills_the_command_and_restarts_the_shell(shell: LocalShell, tmp_path: Path) -> None:
    pid_file = tmp_path / "sleeper.pid"
    await shell.run("cd /", 10)
    result = await shell.run(f"echo started; sh -c 'echo $$ > {pid_file}; exec sleep 100'", 0.5)
    assert result.timed_out and result.exit_code is None
    assert result.output.startswith("started\n")
    assert "timed out after 0.5s" in result.output
    assert await _gone(int(pid_file.read_text()))
    after = await shell.run("pwd", 10)
    assert (after.output, after.exit_code) == (f"{tmp_path}\n", 0)


async def test_huge_output_is_capped_and_drained(shell: LocalShell) -> None:
    tracemalloc.start()
    try:
        result = await shell.run("yes | head -c 50000000; echo; echo last-line", 60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0 and result.truncated
    assert len(result.output) < 2_000 + 100
    assert result.output.startswith("y\ny\n")
    assert result.output.endswith("y\n\nlast-line\n")
    assert "bytes of output cut" in result.output
    assert peak < 5_000_000


async def test_exit_starts_a_new_shell(shell: LocalShell, tmp_path: Path) -> None:
    await shell.run("cd /", 10)
    result = await shell.run("echo bye; exit 3", 10)
    assert result.exit_code == 3
    assert result.output.startswith("bye\n") and "shell exited with code 3" in result.output
    assert (await shell.run("pwd", 10)).output == f"{tmp_path}\n"


async def test_restart_resets_state(shell: LocalShell, tmp_path: Path) -> None:
    await shell.run("cd / && export COLOUR=red", 10)
    await shell.restart()
    assert (await shell.run('pwd; echo "[$COLOUR]"', 10)).output == f"{tmp_path}\n[]\n"


async def test_close_kills_background_processes_and_removes_home(tmp_path: Path) -> None:
    sh = await LocalSandbox().shell(tmp_path, {})
    started = await sh.run("sleep 100 >/dev/null & echo $! $HOME", 10)
    pid, home = started.output.split()
    assert await asyncio.to_thread(os.path.isdir, home) and not home.startswith(str(tmp_path))
    await sh.close()
    assert await _gone(int(pid))
    assert not await asyncio.to_thread(os.path.exists, home)
