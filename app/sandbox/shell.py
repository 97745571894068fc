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

from app.core.errors import SandboxError
from app.core.ports import CommandResult

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BURST = 0
_SETTLE_S = 0.1
_CROWDED = (
    "[{what} running at the sandbox's process limit (a fork bomb?); they were killed and the shell restarted, "
    "so the working directory and variables are reset]"
)
_CHUNK_BYTES = 64 * 1024


class Launcher(Protocol):
    """Starts the process a `PersistentShell` talks to: a bash reading commands from stdin."""

    async def spawn(self) -> asyncio.subprocess.Process:
        """A new bash in its own process group, stdin/stdout piped and stderr merged into stdout."""
        ...

    async def reap(self) -> None:
        """Called after the process group was killed: end whatever else the shell left behind."""
        ...

    def crowded(self) -> bool:
        """Whether what earlier commands left behind fills the sandbox's process limit (a fork bomb)."""
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
        self._processes = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def run(self, command: str, timeout_s: float) -> CommandResult:
        """Run `command`; output is capped (head and tail kept) while all of it is drained."""
        async with self._lock:
            before = ""
            if self._proc is None or self._proc.returncode is not None:
                await self._start()
            elif self._launcher.crowded():
                await self._start()
                before = _CROWDED.format(what="processes earlier commands left")
            capture = _Capture(self._max_output_bytes, _marker().encode())
            try:
                await self._send(_wrap(command, capture.marker), capture, timeout_s)
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
                if await self._left_a_crowd(capture.processes):
                    await self._start()
                    return capture.result(capture.exit_code, note=_CROWDED.format(what="the command left processes"))
                return capture.result(capture.exit_code, before=before)
            code = await _wait(self._proc) if self._proc is not None else None
            await self._start()
            note = f"[the shell exited with code {code}; a new shell was started, so the working directory is reset]"
            return capture.result(code, note=note)

    async def _send(self, script: str, capture: _Capture, timeout_s: float) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise SandboxError("the shell has no pipes; this is a bug in PersistentShell")
        proc.stdin.write(script.encode())
        await proc.stdin.drain()
        async with asyncio.timeout(timeout_s):
            await _read_until_done(proc.stdout, capture)

    async def _left_a_crowd(self, processes: int) -> bool:
        """Whether the command left the sandbox at its process limit. A command that left more processes
        running than before (a fork bomb needs a few milliseconds to fill the limit) is looked at again
        `_SETTLE_S` later."""
        if self._crowded is None:
            return self._launcher.crowded()
        burst, self._processes = processes > self._processes + _BURST, processes
        if processes >= self._crowded or self._launcher.crowded():
            return True
        if not burst:
            return False
        await asyncio.sleep(_SETTLE_S)
        self._processes = await self._count()
        return self._processes == 0 or self._processes >= self._crowded or self._launcher.crowded()

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
        self._launcher.crowded()  # forget the limit hits of what was just killed
        self._processes = 0
        self._proc = await self._launcher.spawn()
        if self._crowded is not None:
            self._processes = await self._count()

    async def _count(self) -> int:
        """How many processes the sandbox holds now (0 when the shell does not answer)."""
        probe = _Capture(self._max_output_bytes, _marker().encode())
        try:
            await self._send(_count(probe.marker), probe, 10)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            return 0
        return probe.processes

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


def _marker() -> str:
    return f"__ROUTINES_DONE_{secrets.token_hex(8)}__"


def _count(marker: str) -> str:
    """A script that only prints the marker with the process count (builtins only: works at the limit)."""
    return f"__routines_ps=(/proc/[0-9]*); printf '%s 0 %d\\n' '{marker}' \"${{#__routines_ps[@]}}\"\n"


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
        self.marker = marker.decode()
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

    def result(
        self, exit_code: int | None, *, note: str = "", before: str = "", timed_out: bool = False
    ) -> CommandResult:
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
        if before:
            text = f"{before}\n{text}"
        return CommandResult(output=text, exit_code=exit_code, timed_out=timed_out, truncated=cut > 0)
