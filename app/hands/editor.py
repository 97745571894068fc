"""`str_replace_based_edit_tool` (Anthropic's text_editor_20250728): view, create, str_replace, insert.

Runs where the files are: inside the sandbox for the workspace (so a symlink, FIFO or race can only
reach what the sandbox sees), and in the worker for the memory folder, which no sandbox process can
reach. Either way it never trusts what it finds: every path is resolved and checked to stay inside
its folder and out of `.git`; a file is opened without following a last symlink and without
blocking, and only a regular file of at most `MAX_FILE_BYTES` is read or written; a directory lists
at most `MAX_LISTED` entries; names that are not UTF-8 are shown with U+FFFD.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_LISTED = 2_000
_SKIPPED_DIRS = frozenset({"node_modules"})
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


class EditorError(Exception):
    """A call the editor refuses; the message is for the model (what is wrong and what to do)."""


class Editor:
    """The editor over the folder `workspace`, shown to the model as `root` (default: the same path)."""

    def __init__(self, workspace: str, *, root: str | None = None, max_characters: int | None = None) -> None:
        self.workspace = os.path.abspath(workspace)
        self.real = os.path.realpath(workspace)
        self.root = (root or self.workspace).rstrip("/") or "/"
        self.max_characters = max_characters

    def run(self, params: dict[str, Any]) -> str:
        """Run one editor command; a bad call raises EditorError with a message for the model."""
        command = params.get("command")
        path = self.resolve(_text(params, "path"))
        try:
            if command == "view":
                return self._view(path, params.get("view_range"))
            if command == "create":
                return self._create(path, _text(params, "file_text", allow_empty=True))
            if command == "str_replace":
                new = params.get("new_str") or ""
                return self._str_replace(path, _text(params, "old_str"), str(new))
            if command == "insert":
                text = params["insert_text"] if "insert_text" in params else params.get("new_str")
                return self._insert(path, params.get("insert_line"), text)
        except OSError as exc:
            raise EditorError(f"{self.show(path)}: {exc.strerror or exc}") from None
        raise EditorError(f"unknown command {command!r}; use view, create, str_replace or insert")

    def resolve(self, raw: str) -> str:
        """The real path for `raw`, or EditorError if it leaves the folder or enters `.git`."""
        relative = None if raw.startswith("/") else raw
        for base in (self.root, self.workspace, self.real):
            if relative is None and _under(raw, base):
                relative = raw[len(base) :].lstrip("/") if base != "/" else raw.lstrip("/")
        if relative is None:
            raise EditorError(f"{raw} is outside the workspace; use a path under {self.root}")
        try:
            real = os.path.realpath(os.path.join(self.real, relative))
        except ValueError as exc:
            raise EditorError(f"{raw} cannot be resolved ({exc}); use a path under {self.root}") from None
        except OSError as exc:
            raise EditorError(f"{raw} changed while it was resolved ({exc.strerror}); try again") from None
        if not _under(real, self.real):
            raise EditorError(f"{raw} resolves outside the workspace; use a path under {self.root}")
        if ".git" in os.path.relpath(real, self.real).split("/"):
            raise EditorError(f"{raw} is inside .git; the runner manages git, edit the working tree only")
        return real

    def show(self, path: str) -> str:
        """`path` as the model sees it, with bytes that are not UTF-8 shown as U+FFFD."""
        relative = os.path.relpath(path, self.real)
        shown = self.root if relative == "." else f"{self.root.rstrip('/')}/{relative}"
        return printable(shown)

    def _view(self, path: str, view_range: object) -> str:
        if os.path.isdir(path):
            if view_range is not None:
                raise EditorError("view_range applies to files only, not directories")
            return self._list(path)
        lines = _lines(self._read(path))
        start, end = _view_range(view_range, len(lines), self.show(path))
        numbered = "\n".join(f"{n:6}\t{line}" for n, line in enumerate(lines[start - 1 : end], start))
        if self.max_characters is not None and len(numbered) > self.max_characters:
            numbered = numbered[: self.max_characters] + "\n[... file cut; view a smaller view_range ...]"
        return f"Here's the result of running `cat -n` on {self.show(path)}:\n{numbered}"

    def _list(self, path: str) -> str:
        entries: list[str] = []
        more = False
        for name, is_dir, is_link in _children(path):
            if len(entries) >= MAX_LISTED:
                more = True
                break
            child = os.path.join(path, name)
            entries.append(self.show(child) + ("/" if is_dir else ""))
            if is_dir and not is_link:
                try:
                    entries += [self.show(os.path.join(child, n)) + ("/" if d else "") for n, d, _ in _children(child)]
                except OSError:
                    continue
        listing = "\n".join(entries[:MAX_LISTED]) or "(empty)"
        if more or len(entries) > MAX_LISTED:
            listing += "\n[... more entries not shown; list parts of it with bash (ls, find) ...]"
        header = f"Here are the files and directories up to 2 levels deep in {self.show(path)}, excluding hidden items:"
        return f"{header}\n{listing}"

    def _create(self, path: str, text: str) -> str:
        if os.path.isdir(path):
            raise EditorError(f"{self.show(path)} is a directory; give a file path")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        existed = _write(path, text.encode(), self.show(path), create=True)
        return f"File {'overwritten' if existed else 'created'}: {self.show(path)}"

    def _str_replace(self, path: str, old: str, new: str) -> str:
        text = self._read(path)
        count = text.count(old)
        if count == 0:
            raise EditorError(
                f"No match found for old_str in {self.show(path)}; it must match exactly, whitespace and "
                "indentation included (view the file first)"
            )
        if count > 1:
            raise EditorError(
                f"Found {count} matches of old_str in {self.show(path)}; give more context so it is unique"
            )
        at = text.index(old)
        edited = text.replace(old, new, 1)
        _write(path, edited.encode(), self.show(path), create=False)
        first = text[:at].count("\n") + 1
        return f"The file {self.show(path)} has been edited.\n" + _snippet(edited, first, first + new.count("\n"))

    def _insert(self, path: str, line: object, text: object) -> str:
        if not isinstance(text, str):
            raise EditorError("insert needs insert_text (the text to insert)")
        original = self._read(path)
        lines = _lines(original)
        if not isinstance(line, int) or isinstance(line, bool) or not 0 <= line <= len(lines):
            raise EditorError(f"insert_line must be a line number from 0 (top) to {len(lines)} (end of the file)")
        added = _lines(text) or [""]
        end = "\n" if original.endswith("\n") or not original else ""
        edited = "\n".join([*lines[:line], *added, *lines[line:]]) + end
        _write(path, edited.encode(), self.show(path), create=False)
        return f"The file {self.show(path)} has been edited.\n" + _snippet(edited, line + 1, line + len(added))

    def _read(self, path: str) -> str:
        shown = self.show(path)
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            raise EditorError(f"{shown} does not exist; check the path, or use create to make a new file") from None
        except OSError as exc:
            raise EditorError(f"{shown} cannot be opened ({exc.strerror}); the editor handles regular files") from None
        try:
            data = _read_regular(fd, shown)
        finally:
            os.close(fd)
        if b"\0" in data:
            raise EditorError(f"{shown} is a binary file; the editor handles text files only")
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise EditorError(f"{shown} is not UTF-8 text; the editor handles UTF-8 files only") from None


def _read_regular(fd: int, shown: str) -> bytes:
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise EditorError(f"{shown} is a directory; use view to list it")
    if not stat.S_ISREG(info.st_mode):
        raise EditorError(f"{shown} is not a regular file (a FIFO, socket or device); the editor handles text files")
    if info.st_size > MAX_FILE_BYTES:
        raise EditorError(
            f"{shown} is {info.st_size:,} bytes, over the editor's {MAX_FILE_BYTES:,}; "
            "read parts of it with bash (head, sed -n '100,200p')"
        )
    chunks: list[bytes] = []
    left = MAX_FILE_BYTES + 1
    while left > 0:
        chunk = os.read(fd, min(left, 1024 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    if left <= 0:
        raise EditorError(f"{shown} grew past the editor's {MAX_FILE_BYTES:,} bytes while it was read")
    return b"".join(chunks)


def _write(path: str, data: bytes, shown: str, *, create: bool) -> bool:
    """Write `data` into the regular file at `path` (made when `create`); True when it existed."""
    try:
        fd = os.open(path, _WRITE_FLAGS)
        existed = True
    except FileNotFoundError:
        if not create:
            raise
        fd = os.open(path, _WRITE_FLAGS | os.O_CREAT | os.O_EXCL, 0o666)
        existed = False
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP, errno.ENODEV):  # a FIFO without reader, a socket, a device
            raise EditorError(f"{shown} is not a regular file (a FIFO, socket or device); write one that is") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise EditorError(f"{shown} is not a regular file (a FIFO, socket or device); write a regular file")
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return existed


def _children(path: str) -> list[tuple[str, bool, bool]]:
    """(name, is a directory, is a symlink) of the visible entries of `path`, sorted; at most MAX_LISTED + 1."""
    found: list[tuple[str, bool, bool]] = []
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith(".") or entry.name in _SKIPPED_DIRS:
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            found.append((entry.name, is_dir, entry.is_symlink()))
            if len(found) > 50 * MAX_LISTED:
                break
    found.sort()
    return found[: MAX_LISTED + 1]


def printable(text: str) -> str:
    """`text` with undecodable bytes (surrogate escapes from the file system) replaced by U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _under(path: str, base: str) -> bool:
    return base == "/" or path == base or path.startswith(base.rstrip("/") + "/")


def _text(params: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = params.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise EditorError(f"`{key}` is required and must be a string")
    return value


def _lines(text: str) -> list[str]:
    """Lines as `cat -n` numbers them: a final newline does not start another line."""
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _view_range(view_range: object, count: int, shown: str) -> tuple[int, int]:
    if view_range is None:
        return 1, count
    if (
        not isinstance(view_range, list)
        or len(view_range) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in view_range)
    ):
        raise EditorError("view_range must be [start, end] with 1-based line numbers; end -1 means the end")
    start, end = view_range
    end = count if end == -1 else min(end, count)
    if not 1 <= start <= count or end < start:
        raise EditorError(f"view_range {view_range} is invalid: {shown} has {count} lines; start must be 1..{count}")
    return start, end


def _snippet(text: str, first: int, last: int, context: int = 4) -> str:
    lines = text.split("\n")
    start = max(first - context, 1)
    shown = lines[start - 1 : last + context]
    return "\n".join(f"{n:6}\t{line}" for n, line in enumerate(shown, start))
