"""The persistent shell: one bash over pipes, with command framing, an output cap, timeouts and restarts.

A `Launcher` decides how that bash starts: directly (`local.py`) or inside bubblewrap (`bwrap.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
from pathlib import Path
from typing import Protocol

from app.errors import SandboxError
from app.ports import CommandResult

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CHUNK_BYTES = 64 * 1024


class Launcher(Protocol):
    """Starts the process a `PersistentShell` talks to: a bash reading commands from stdin."""

    async def spawn(self) -> asyncio.subprocess.Process:
        """A new bash in its own process group, stdin/stdout piped and stderr merged into stdout."""
        ...

    async def reap(self) -> None:
        """Called after the process group was killed: end whatever else the shell left behind."""
        ...

    async def close(self) -> None:
        """Release what `spawn` made (a private HOME, a cgroup); the shell is not started again."""
        ...


class PersistentShell:
    """One `bash` process in its own process group; cwd and variables survive between commands.

    A command runs with stdin from /dev/null and stderr merged into stdout. A command that times
    out is killed with its whole process group and the shell is restarted (state is lost). With
    `max_processes` (the shell's own pid namespace counts them), a command that leaves the sandbox
    at 90% of its process limit (a fork bomb) has everything it left killed the same way, so the
    next command runs clean; background processes below that keep running.
    `launcher` decides how bash is started (directly, or inside bubblewrap).
    """

    def __init__(
        self, launcher: Launcher, *, workdir: Path, max_output_bytes: int, max_processes: int | None = None
    ) -> None:
        self.workdir = workdir
        self._launcher = launcher
        self._max_output_bytes = max_output_bytes
        self._crowded = None if max_processes is None else max(int(max_processes * 0.9), 1)
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def run(self, command: str, timeout_s: float) -> CommandResult:
        """Run `command`; output is capped (head and tail kept) while all of it is drained."""
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                await self._start()
            proc = self._proc
            if proc is None or proc.stdin is None or proc.stdout is None:
                raise SandboxError("the shell has no pipes; this is a bug in PersistentShell")
            marker = f"__ROUTINES_DONE_{secrets.token_hex(8)}__"
            capture = _Capture(self._max_output_bytes, marker.encode())
            try:
                proc.stdin.write(_wrap(command, marker).encode())
                await proc.stdin.drain()
                async with asyncio.timeout(timeout_s):
                    await _read_until_done(proc.stdout, capture)
            except TimeoutError:
                await self._start()
                note = (
                    f"[the command timed out after {timeout_s:g}s and was killed; the shell was restarted,"
                    " so the working directory and variables are reset]"
                )
                return capture.result(None, note=note, timed_out=True)
            except (BrokenPipeError, ConnectionResetError):
                pass
            if capture.exit_code is not None:
                if self._crowded is not None and capture.processes >= self._crowded:
                    await self._start()
                    note = (
                        f"[the command left {capture.processes} processes running, at the sandbox's process limit;"
                        " they were killed and the shell restarted, so the working directory and variables are reset]"
                    )
                    return capture.result(capture.exit_code, note=note)
                return capture.result(capture.exit_code)
            code = await _wait(proc)
            await self._start()
            note = f"[the shell exited with code {code}; a new shell was started, so the working directory is reset]"
            return capture.result(code, note=note)

    async def restart(self) -> None:
        """Kill the current shell (if any) with its process group and start a fresh one."""
        async with self._lock:
            await self._start()

    async def stop(self) -> None:
        """Kill the shell and everything it started; a later command starts a new shell."""
        async with self._lock:
            await self._kill()

    async def close(self) -> None:
        """Kill the shell's process group and release what its launcher made."""
        async with self._lock:
            await self._kill()
            await self._launcher.close()

    async def _start(self) -> None:
        await self._kill()
        self._proc = await self._launcher.spawn()

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdin is not None:
            proc.stdin.close()
        await _wait(proc)
        await self._launcher.reap()
        if proc.stdout is not None:
            # Read to EOF so the pipe transport closes; a process that escaped the group may hold it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    while await proc.stdout.read(_CHUNK_BYTES):
                        pass


def _wrap(command: str, marker: str) -> str:
    """The script sent to bash: read the command verbatim, eval it, then print marker, exit code and
    the number of processes in /proc (the sandbox's own pid namespace under bwrap).

    Going through `read` + `eval` keeps a command with a syntax error (an unclosed quote) from
    swallowing the lines after it, which would hang the shell. The count uses only builtins, so it
    works while a fork bomb holds every process slot.
    """
    delimiter = f"__ROUTINES_CMD_{secrets.token_hex(8)}__"
    return (
        f"IFS= read -r -d '' __routines_cmd <<'{delimiter}'\n{command}\n{delimiter}\n"
        '{ eval "$__routines_cmd"; } </dev/null 2>&1\n'
        "__routines_rc=$?; __routines_ps=(/proc/[0-9]*)\n"
        f"printf '%s %d %d\\n' '{marker}' \"$__routines_rc\" \"${{#__routines_ps[@]}}\"\n"
    )


async def _read_until_done(stdout: asyncio.StreamReader, capture: _Capture) -> None:
    while capture.exit_code is None:
        chunk = await stdout.read(_CHUNK_BYTES)
        if not chunk:
            return
        capture.feed(chunk)


async def _wait(proc: asyncio.subprocess.Process) -> int | None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            return await proc.wait()
    return proc.returncode


class _Capture:
    """Keeps the first and last `limit // 2` bytes of a stream and finds the end marker in it."""

    def __init__(self, limit: int, marker: bytes) -> None:
        self._half = max(limit // 2, 1)
        self._pattern = re.compile(re.escape(marker) + rb" (-?\d+)(?: (\d+))?\n")
        self._overlap = len(marker) + 16
        self._head = bytearray()
        self._tail = bytearray()
        self._recent = b""
        self._total = 0
        self._end: int | None = None
        self.exit_code: int | None = None
        self.processes = 0

    def feed(self, chunk: bytes) -> None:
        window = self._recent + chunk
        found = self._pattern.search(window)
        if found:
            self._end = self._total - len(self._recent) + found.start()
            self.exit_code = int(found.group(1))
            self.processes = int(found.group(2) or 0)
        self._recent = window[-self._overlap :]
        self._total += len(chunk)
        room = self._half - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        self._tail += chunk
        if len(self._tail) > 2 * (self._half + self._overlap):
            del self._tail[: -(self._half + self._overlap)]

    def result(self, exit_code: int | None, *, note: str = "", timed_out: bool = False) -> CommandResult:
        end = self._total if self._end is None else self._end
        head = bytes(self._head[:end])
        tail_start = self._total - len(self._tail)
        tail = bytes(self._tail[: max(end - tail_start, 0)])
        cut = tail_start - len(self._head) if tail_start > len(self._head) else 0
        if len(tail) > self._half:
            cut += len(tail) - self._half
            tail = tail[-self._half :]
        text = head.decode(errors="replace")
        if cut:
            text += f"\n[... {cut} bytes of output cut ...]\n"
        text += tail.decode(errors="replace")
        if note:
            text = f"{text.rstrip()}\n{note}" if text.strip() else note
        return CommandResult(output=text, exit_code=exit_code, timed_out=timed_out, truncated=cut > 0)
