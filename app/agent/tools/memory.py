"""Memory between runs: Anthropic's client-side memory tool over a per-run `/memories` folder.

The model manages files under `/memories` with the `memory_20250818` tool (view, create,
str_replace, insert, delete, rename). The folder lives on the host, outside the sandbox, in the
run's directory, where no process of the agent can reach it: only these commands change it, and
they use the same guarded editor as the sandbox (no following of a last symlink, regular files
only, bounded reads); it is filled from the routine's stored memory before the agent starts, and
written back to the store after every command that changed it, so a resumed run (or a crash)
never loses an answered memory write. The folder is capped (by default 100 KB in 50 files): a
command that would go over is undone and answered with an error that says what to delete.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from app.core.domain import JSON
from app.core.errors import StoreError, ToolError
from app.core.ports import MemoryStore
from app.hands.editor import Editor, EditorError

MEMORY = "memory"
ROOT = "/memories"
_WRITES = frozenset({"create", "str_replace", "insert", "delete", "rename"})


@dataclass(frozen=True)
class MemoryLimits:
    max_bytes: int = 100_000
    max_files: int = 50


class Memory:
    """One run's `/memories` folder at `path`, its store and its limits; `run` answers the memory tool.

    Commands that change the folder are saved to the store at once. Errors raise ToolError with a
    message for the model; a StoreError while saving is reported to the model the same way.
    """

    def __init__(
        self, path: Path, *, routine: str, store: MemoryStore | None = None, limits: MemoryLimits | None = None
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.routine = routine
        self.store = store
        self.limits = limits or MemoryLimits()
        self._editor = Editor(str(path), root=ROOT)

    @classmethod
    async def restore(cls, store: MemoryStore, routine: str, path: Path, limits: MemoryLimits | None = None) -> Memory:
        """A folder at `path` holding the routine's stored memory (stored paths that would escape are skipped)."""
        memory = cls(path, routine=routine, store=store, limits=limits)
        for name, data in (await store.load(routine)).items():
            relative = PurePosixPath(name)
            if relative.is_absolute() or ".." in relative.parts or not relative.parts:
                continue
            target = path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return memory

    def definition(self) -> JSON:
        return {"type": "memory_20250818", "name": MEMORY}

    def files(self) -> dict[str, bytes]:
        """Every file of the folder: path relative to `/memories` → bytes."""
        real = self.path.resolve()
        return {
            p.relative_to(real).as_posix(): p.read_bytes()
            for p in sorted(real.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }

    def stats(self) -> JSON:
        files = self.files()
        return {"files": len(files), "bytes": sum(len(v) for v in files.values()), "paths": sorted(files)[:50]}

    async def run(self, params: dict[str, Any]) -> str:
        """Run one memory command; a command that changed the folder is saved to the store."""
        command = params.get("command")
        if command not in _WRITES and command != "view":
            raise ToolError(f"unknown command {command!r}; use view, create, str_replace, insert, delete or rename")
        before = await asyncio.to_thread(self.files)
        try:
            output = await asyncio.to_thread(self._run, str(command), params)
        except EditorError as exc:
            raise ToolError(str(exc)) from None
        if command in _WRITES:
            after = await asyncio.to_thread(self.files)
            problem = self._over_limits(after)
            if problem:
                await asyncio.to_thread(self._reset, before)
                raise ToolError(problem)
            await self.save(after)
        return output

    async def save(self, files: dict[str, bytes] | None = None) -> None:
        """Write the folder (or `files`) to the store; ToolError when the store fails."""
        if self.store is None:
            return
        try:
            await self.store.save(self.routine, self.files() if files is None else files)
        except StoreError as exc:
            raise ToolError(f"the memory change was made but could not be saved for the next run: {exc}") from None

    def _run(self, command: str, params: dict[str, Any]) -> str:
        if command == "rename":
            return self._rename(_path(params, "old_path"), _path(params, "new_path"))
        raw = _path(params, "path")
        if command == "delete":
            return self._delete(raw)
        if command == "create" and len(str(params.get("file_text", "")).encode()) > self.limits.max_bytes:
            raise ToolError(f"{raw} would be larger than the whole memory limit ({self._limits()}); write less")
        return self._editor.run(params)

    def _delete(self, raw: str) -> str:
        target = Path(self._editor.resolve(raw))
        if target == self.path.resolve():
            raise ToolError(f"{ROOT} itself cannot be deleted; delete the files inside it")
        if not target.exists():
            raise ToolError(f"{raw} does not exist; view {ROOT} to see what is there")
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
        return f"Deleted {self._editor.show(str(target))}"

    def _rename(self, old_raw: str, new_raw: str) -> str:
        old, new = Path(self._editor.resolve(old_raw)), Path(self._editor.resolve(new_raw))
        if not old.exists():
            raise ToolError(f"{old_raw} does not exist; view {ROOT} to see what is there")
        if new.exists():
            raise ToolError(f"{new_raw} already exists; delete it first or choose another name")
        if old == self.path.resolve():
            raise ToolError(f"{ROOT} itself cannot be renamed")
        new.parent.mkdir(parents=True, exist_ok=True)
        old.rename(new)
        return f"Renamed {self._editor.show(str(old))} to {self._editor.show(str(new))}"

    def _over_limits(self, files: dict[str, bytes]) -> str | None:
        size = sum(len(v) for v in files.values())
        if size <= self.limits.max_bytes and len(files) <= self.limits.max_files:
            return None
        return (
            f"not done: {ROOT} would hold {len(files)} files and {size:,} bytes, over its limit of "
            f"{self._limits()}. Delete or shorten files you no longer need, then try again."
        )

    def _limits(self) -> str:
        return f"{self.limits.max_files} files and {self.limits.max_bytes:,} bytes"

    def _reset(self, files: dict[str, bytes]) -> None:
        real = self.path.resolve()
        for child in real.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        for name, data in files.items():
            (real / name).parent.mkdir(parents=True, exist_ok=True)
            (real / name).write_bytes(data)


def _path(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise ToolError(f"`{key}` is required: a path under {ROOT}, e.g. {ROOT}/notes.md")
    if value != ROOT and not value.startswith(ROOT + "/"):
        raise ToolError(f"{value} is outside the memory folder; memory paths start with {ROOT}/")
    return value
