"""The worker's side of a run's hands: the persistent shell, and the hands process (app.hands) beside it.

The hands process edits files and stages the work tree where the agent's commands run, so the
worker never opens a path the agent can influence. It starts on first use and is started again
after it dies or stops answering; a call it cannot answer is a tool error, never a crash of the
run. Answers are bounded: a JSON answer at most `MAX_ANSWER_BYTES`, an object at most the limit of
the request that asked for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.core.domain import JSON
from app.core.errors import SandboxError, ToolError, WorkspaceError
from app.core.ports import CommandResult, Staged, StageLimits
from app.hands.wire import HEADER, WireError, dump, frame
from app.sandbox.shell import DEFAULT_PATH, PersistentShell

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024 * 1024
EDIT_TIMEOUT_S = 30.0
STAGE_TIMEOUT_S = 120.0
_STDERR_LINES = 20


class HandsProcess:
    """One hands process started from `argv`, asked one request at a time.

    A request that times out, or an answer that breaks the framing, kills the process (and its
    process group); the next request starts a new one.
    """

    def __init__(self, argv: Sequence[str], *, cwd: str = "/", env: dict[str, str] | None = None) -> None:
        self._argv = list(argv)
        self._cwd = cwd
        self._env = env or {"PATH": DEFAULT_PATH}
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._drain: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.starts = 0

    async def request(
        self,
        message: JSON,
        *,
        timeout_s: float,
        frames: Sequence[bytes] = (),
        max_frames: int = 0,
        max_frame_bytes: int = MAX_ANSWER_BYTES,
        max_total_bytes: int = MAX_ANSWER_BYTES,
    ) -> tuple[JSON, list[bytes]]:
        """Send `message` (and `frames`); the JSON answer and the raw frames it announces.

        At most `max_frames` frames of `max_frame_bytes` each and `max_total_bytes` together are read.
        Raises SandboxError when the process cannot be started, dies, breaks the framing or a limit,
        or does not answer within `timeout_s` (it is then killed).
        """
        async with self._lock:
            proc = await self._started()
            try:
                async with asyncio.timeout(timeout_s):
                    limits = (max_frames, max_frame_bytes, max_total_bytes)
                    return await self._exchange(proc, {**message, "frames": len(frames)}, frames, limits)
            except TimeoutError:
                await self._kill()
                raise SandboxError(
                    f"the sandbox's hands did not answer within {timeout_s:g} s; they were restarted"
                ) from None
            except (OSError, EOFError, WireError, asyncio.IncompleteReadError, ValueError) as exc:
                await self._kill()
                raise SandboxError(f"the sandbox's hands stopped ({_reason(exc)}){self._tail()}") from None

    async def close(self) -> None:
        async with self._lock:
            await self._kill()

    async def _exchange(
        self, proc: asyncio.subprocess.Process, message: JSON, frames: Sequence[bytes], limits: tuple[int, int, int]
    ) -> tuple[JSON, list[bytes]]:
        if proc.stdin is None or proc.stdout is None:
            raise EOFError("no pipes")
        proc.stdin.write(dump(message) + b"".join(frame(f) for f in frames))
        await proc.stdin.drain()
        answer = json.loads(await _read_frame(proc.stdout, MAX_ANSWER_BYTES))
        if not isinstance(answer, dict):
            raise ValueError("the answer is not a JSON object")
        objects = answer.get("objects") if answer.get("ok") else None
        count = len(objects) if isinstance(objects, list) else 0
        max_frames, max_frame_bytes, budget = limits
        if count > max_frames:
            raise WireError(f"the answer announced {count} frames, {max_frames} were asked for")
        extra = []
        for _ in range(count):
            extra.append(await _read_frame(proc.stdout, min(max_frame_bytes, budget)))
            budget -= len(extra[-1])
        return answer, extra

    async def _started(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        await self._kill()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self._cwd,
                env=self._env,
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxError(f"cannot start the sandbox's hands ({exc.strerror}): {self._argv[0]}") from None
        self._proc = proc
        self.starts += 1
        self._drain = asyncio.create_task(self._read_stderr(proc))
        return proc

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stderr is None:
            return
        while line := await proc.stderr.readline():
            self._stderr.append(line.decode(errors="replace").rstrip()[:500])

    def _tail(self) -> str:
        lines = [line for line in self._stderr if line.strip()]
        return f": {' | '.join(lines[-3:])}" if lines else ""

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await proc.wait()
        if self._drain is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(2):
                    await self._drain
            self._drain = None


async def _read_frame(stream: asyncio.StreamReader, limit: int) -> bytes:
    (size,) = HEADER.unpack(await stream.readexactly(HEADER.size))
    if size > limit:
        raise WireError(f"an answer of {size:,} bytes is over the {limit:,} allowed")
    return await stream.readexactly(size)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "it exited"
    return str(exc) or type(exc).__name__


class SandboxHands:
    """The `Hands` of one run: commands go to `shell`, file edits and staging to `process`."""

    def __init__(
        self, shell: PersistentShell, process: HandsProcess, workdir: Path, *, cleanup: Sequence[Path] = ()
    ) -> None:
        self.workdir = workdir
        self._shell = shell
        self._process = process
        self._cleanup = tuple(cleanup)

    async def run(self, command: str, timeout_s: float) -> CommandResult:
        return await self._shell.run(command, timeout_s)

    async def restart(self) -> None:
        await self._shell.restart()

    async def edit(self, params: JSON, max_characters: int | None = None) -> str:
        try:
            answer, _ = await self._process.request(
                {"op": "edit", "params": params, "max_characters": max_characters}, timeout_s=EDIT_TIMEOUT_S
            )
        except SandboxError as exc:
            raise ToolError(str(exc)) from None
        if not answer.get("ok"):
            raise ToolError(str(answer.get("error") or "the editor refused the call"))
        return str(answer.get("output", ""))

    async def stage(self, base: str, seed: bytes | None, limits: StageLimits) -> Staged:
        message: JSON = {
            "op": "stage",
            "base": base,
            "max_file_bytes": limits.max_file_bytes,
            "max_total_bytes": limits.max_total_bytes,
            "max_files": limits.max_files,
        }
        answer, _ = await self._ask(message, frames=[seed] if seed else [])
        tree, files, skipped = answer.get("tree"), answer.get("files"), answer.get("skipped")
        if not isinstance(tree, str) or not isinstance(files, int) or not isinstance(skipped, list):
            raise WorkspaceError("the sandbox answered a snapshot without a tree; this is a bug in app.hands")
        return Staged(tree, files, [_skip(item) for item in skipped[:1000]])

    async def names(self) -> list[str]:
        """The work tree's top-level entries (`.git` aside), as the sandbox sees them."""
        answer, _ = await self._stash({"op": "names"})
        listed = answer.get("names")
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            raise WorkspaceError("the sandbox listed the work tree in an unknown shape")
        return listed

    async def pack(self, created: list[str], max_bytes: int) -> int:
        """Save what the setup made (`created` top-level entries, and $HOME) to the exchange folder; bytes."""
        answer, _ = await self._stash({"op": "pack", "created": created, "max_bytes": max_bytes})
        return int(answer.get("bytes") or 0)

    async def ignore(self, names: list[str]) -> None:
        """Never stage these top-level entries of the work tree (what the setup made) in a snapshot."""
        await self._stash({"op": "ignore", "names": names})

    async def unpack(self) -> int:
        """Fill the work tree and $HOME from the exchange folder's saved setup; files."""
        answer, _ = await self._stash({"op": "unpack"})
        return int(answer.get("files") or 0)

    async def _stash(self, message: JSON) -> tuple[JSON, list[bytes]]:
        try:
            answer, frames = await self._process.request(message, timeout_s=STAGE_TIMEOUT_S)
        except SandboxError as exc:
            raise WorkspaceError(f"the saved setup could not be handled: {exc}") from None
        if not answer.get("ok"):
            raise WorkspaceError(f"the saved setup could not be handled: {answer.get('error')}")
        return answer, frames

    async def objects(self, oids: list[str], max_bytes: int, budget: int) -> list[tuple[str, int, bytes]]:
        answer, frames = await self._ask(
            {"op": "objects", "oids": oids, "max_bytes": max_bytes},
            max_frames=len(oids),
            max_frame_bytes=max_bytes,
            max_total_bytes=budget,
        )
        listed = answer.get("objects")
        if not isinstance(listed, list) or len(listed) != len(frames):
            raise WorkspaceError("the sandbox answered objects that do not match what it announced")
        found = []
        for item, data in zip(listed, frames, strict=True):
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
                raise WorkspaceError("the sandbox described an object in an unknown shape")
            if not isinstance(item[1], int):
                raise WorkspaceError("the sandbox described an object in an unknown shape")
            found.append((item[0], item[1], data))
        return found

    async def stop(self) -> None:
        await self._shell.stop()

    async def close(self) -> None:
        """End both processes, then remove what they left outside the workspace (never following a link)."""
        try:
            await self._shell.close()
        finally:
            await self._process.close()
            for path in self._cleanup:
                await asyncio.to_thread(shutil.rmtree, path, True)

    async def _ask(self, message: JSON, **kwargs: Any) -> tuple[JSON, list[bytes]]:
        try:
            answer, frames = await self._process.request(message, timeout_s=STAGE_TIMEOUT_S, **kwargs)
        except SandboxError as exc:
            raise WorkspaceError(f"could not snapshot the work tree: {exc}") from None
        if not answer.get("ok"):
            raise WorkspaceError(f"could not snapshot the work tree: {answer.get('error')}")
        return answer, frames


def _skip(item: Any) -> JSON:
    if not isinstance(item, dict):
        return {"path": "?", "reason": "?"}
    return {"path": str(item.get("path", "?"))[:500], "reason": str(item.get("reason", "?"))[:300]}
