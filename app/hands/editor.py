"""`str_replace_based_edit_tool` (Anthropic's text_editor_20250728): view, create, str_replace, insert.

Runs where the files are: inside the sandbox for the workspace (so whatever a symlink, FIFO or race
does, it does to what the sandbox sees), and in the worker for the memory folder, which no
sandbox process can reach. Either way it trusts nothing it finds. Every path is opened from a
descriptor of the folder with `openat2(RESOLVE_BENEATH)`: the kernel resolves it atomically and
refuses anything that would leave the folder, through `..`, an absolute or a magic symlink, at any
component, however the agent swaps folders meanwhile (where openat2 is missing, the path is walked
component by component and no symlink is followed at all). A file is opened without blocking and
only a regular file of at most `MAX_FILE_BYTES` is read or written, through the descriptor it was
opened as; a directory lists at most `MAX_LISTED` entries; names that are not UTF-8 are shown with
U+FFFD; `.git` is the runner's and refused.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from .beneath import Unsafe, open_beneath

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_LISTED = 2_000
_SKIPPED_DIRS = frozenset({"node_modules"})
_NOBLOCK = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


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
        raw = _text(params, "path")
        if command not in ("view", "create", "str_replace", "insert"):
            raise EditorError(f"unknown command {command!r}; use view, create, str_replace or insert")
        relative = self.relative(raw)
        folder = os.open(self.real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _Call(self, folder, raw, relative).run(str(command), params)
        except OSError as exc:
            raise EditorError(f"{self.show(relative)}: {exc.strerror or exc}") from None
        finally:
            os.close(folder)

    def relative(self, raw: str) -> str:
        """`raw` as a path relative to the folder ("." for the folder itself), checked without touching the
        file system: inside `root` (or the folder's own path), not climbing out, not into `.git`."""
        relative = None if raw.startswith("/") else raw
        for base in (self.root, self.workspace, self.real):
            if relative is None and _under(raw, base):
                relative = raw[len(base) :].lstrip("/") if base != "/" else raw.lstrip("/")
        if relative is None:
            raise EditorError(f"{raw} is outside the workspace; use a path under {self.root}")
        if "\0" in relative:
            raise EditorError(f"{raw!r} holds a NUL character; give a plain path under {self.root}")
        normal = os.path.normpath(relative) if relative else "."
        if normal == ".." or normal.startswith("../"):
            raise EditorError(f"{raw} resolves outside the workspace; use a path under {self.root}")
        if ".git" in normal.split("/"):
            raise EditorError(f"{raw} is inside .git; the runner manages git, edit the working tree only")
        return normal

    def resolve(self, raw: str) -> str:
        """The real path of `raw` (symlinks resolved), for folders no other process writes (the memory
        folder); EditorError if it leaves the folder or enters `.git`."""
        relative = self.relative(raw)
        real = os.path.realpath(os.path.join(self.real, relative))
        if not _under(real, self.real):
            raise EditorError(f"{raw} resolves outside the workspace; use a path under {self.root}")
        if ".git" in os.path.relpath(real, self.real).split("/"):
            raise EditorError(f"{raw} is inside .git; the runner manages git, edit the working tree only")
        return real

    def show(self, path: str) -> str:
        """`path` (relative to the folder, or absolute under it) as the model sees it; bytes that are not
        UTF-8 shown as U+FFFD."""
        relative = os.path.relpath(path, self.real) if path.startswith("/") else os.path.normpath(path)
        shown = self.root if relative == "." else f"{self.root.rstrip('/')}/{relative}"
        return printable(shown)


class _Call:
    """One editor command: every file it touches is opened beneath `folder`, a descriptor of the folder."""

    def __init__(self, editor: Editor, folder: int, raw: str, relative: str) -> None:
        self.editor = editor
        self.folder = folder
        self.raw = raw
        self.relative = relative

    def run(self, command: str, params: dict[str, Any]) -> str:
        if command == "view":
            return self._view(params.get("view_range"))
        if command == "create":
            return self._create(_text(params, "file_text", allow_empty=True))
        if command == "str_replace":
            old, new = _text(params, "old_str"), str(params.get("new_str") or "")
            return self._edit(lambda text, shown: _replace(text, old, new, shown))
        text = params["insert_text"] if "insert_text" in params else params.get("new_str")
        line = params.get("insert_line")
        return self._edit(lambda original, shown: _insert(original, line, text))

    def _open(self, relative: str, flags: int, mode: int = 0) -> int:
        try:
            return open_beneath(self.folder, relative, flags, mode)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.ELOOP) or isinstance(exc, Unsafe):
                raise EditorError(
                    f"{self.raw} resolves outside the workspace; use a path under {self.editor.root}"
                ) from None
            raise

    def _shown(self, fd: int) -> str:
        """Where `fd` really is, as the model sees it; EditorError if that is inside `.git`."""
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return self.editor.show(self.relative)
        inside = os.path.relpath(real, self.editor.real)
        if inside == ".." or inside.startswith("../"):
            raise EditorError(f"{self.raw} resolves outside the workspace; use a path under {self.editor.root}")
        if ".git" in inside.split("/"):
            raise EditorError(f"{self.raw} is inside .git; the runner manages git, edit the working tree only")
        return self.editor.show(inside)

    def _view(self, view_range: object) -> str:
        fd = self._opened(os.O_RDONLY | _NOBLOCK, "")
        try:
            shown = self._shown(fd)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                if view_range is not None:
                    raise EditorError("view_range applies to files only, not directories")
                return self._list(fd, shown)
            lines = _lines(_decode(_read_regular(fd, shown), shown))
        finally:
            os.close(fd)
        start, end = _view_range(view_range, len(lines), shown)
        numbered = "\n".join(f"{n:6}\t{line}" for n, line in enumerate(lines[start - 1 : end], start))
        limit = self.editor.max_characters
        if limit is not None and len(numbered) > limit:
            numbered = numbered[:limit] + "\n[... file cut; view a smaller view_range ...]"
        return f"Here's the result of running `cat -n` on {shown}:\n{numbered}"

    def _list(self, fd: int, shown: str) -> str:
        entries: list[str] = []
        more = False
        for name, is_dir, is_link in _children(fd):
            if len(entries) >= MAX_LISTED:
                more = True
                break
            entries.append(f"{shown}/{printable(name)}" + ("/" if is_dir else ""))
            if is_dir and not is_link:
                try:
                    child = open_beneath(fd, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _NOBLOCK)
                except OSError:
                    continue
                try:
                    inner = _children(child)
                finally:
                    os.close(child)
                entries += [f"{shown}/{printable(name)}/{printable(n)}" + ("/" if d else "") for n, d, _ in inner]
        listing = "\n".join(entries[:MAX_LISTED]) or "(empty)"
        if more or len(entries) > MAX_LISTED:
            listing += "\n[... more entries not shown; list parts of it with bash (ls, find) ...]"
        header = f"Here are the files and directories up to 2 levels deep in {shown}, excluding hidden items:"
        return f"{header}\n{listing}"

    def _create(self, text: str) -> str:
        self._make_parents()
        try:
            fd, existed = self._opened(os.O_WRONLY | _NOBLOCK, "give a file path"), True
        except FileNotFoundError:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _NOBLOCK
            fd, existed = self._open(self.relative, flags, 0o666), False
        try:
            shown = self._shown(fd)
            _rewrite(fd, text.encode(), shown)
        finally:
            os.close(fd)
        return f"File {'overwritten' if existed else 'created'}: {shown}"

    def _edit(self, change: Any) -> str:
        """Read, change and write back one file through the one descriptor it was opened as."""
        fd = self._opened(os.O_RDWR | _NOBLOCK, "use view to list it")
        try:
            shown = self._shown(fd)
            original = _decode(_read_regular(fd, shown), shown)
            edited, first, last = change(original, shown)
            _rewrite(fd, edited.encode(), shown)
        finally:
            os.close(fd)
        return f"The file {shown} has been edited.\n" + _snippet(edited, first, last)

    def _opened(self, flags: int, on_folder: str) -> int:
        """The path opened with `flags`; a missing file raises FileNotFoundError only for writing."""
        shown = self.editor.show(self.relative)
        try:
            return self._open(self.relative, flags)
        except FileNotFoundError:
            if flags & os.O_WRONLY:
                raise
            raise EditorError(f"{shown} does not exist; check the path, or use create to make a new file") from None
        except IsADirectoryError:
            raise EditorError(f"{shown} is a directory; {on_folder}") from None
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP, errno.ENODEV):  # FIFO without reader, socket, device
                raise EditorError(
                    f"{shown} is not a regular file (a FIFO, socket or device); use a regular one"
                ) from None
            raise

    def _make_parents(self) -> None:
        parts = [p for p in os.path.dirname(self.relative).split("/") if p and p != "."]
        for depth in range(len(parts)):
            here = "/".join(parts[: depth + 1])
            try:
                os.close(self._open(here, os.O_PATH | os.O_DIRECTORY))
                continue
            except FileNotFoundError:
                pass
            parent = self._open("/".join(parts[:depth]) or ".", os.O_PATH | os.O_DIRECTORY)
            try:
                os.mkdir(parts[depth], dir_fd=parent)
            except FileExistsError:
                pass
            finally:
                os.close(parent)


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
    at, left = 0, MAX_FILE_BYTES + 1
    while left > 0:
        chunk = os.pread(fd, min(left, 1024 * 1024), at)
        if not chunk:
            break
        chunks.append(chunk)
        at += len(chunk)
        left -= len(chunk)
    if left <= 0:
        raise EditorError(f"{shown} grew past the editor's {MAX_FILE_BYTES:,} bytes while it was read")
    return b"".join(chunks)


def _decode(data: bytes, shown: str) -> str:
    if b"\0" in data:
        raise EditorError(f"{shown} is a binary file; the editor handles text files only")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise EditorError(f"{shown} is not UTF-8 text; the editor handles UTF-8 files only") from None


def _rewrite(fd: int, data: bytes, shown: str) -> None:
    """Replace the content of the regular file open as `fd` with `data` (in place: mode and links kept)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise EditorError(f"{shown} is not a regular file (a FIFO, socket or device); write a regular one")
    os.ftruncate(fd, 0)
    view, at = memoryview(data), 0
    while at < len(data):
        at += os.pwrite(fd, view[at:], at)


def _replace(text: str, old: str, new: str, shown: str) -> tuple[str, int, int]:
    count = text.count(old)
    if count == 0:
        raise EditorError(
            f"No match found for old_str in {shown}; it must match exactly, whitespace and "
            "indentation included (view the file first)"
        )
    if count > 1:
        raise EditorError(f"Found {count} matches of old_str in {shown}; give more context so it is unique")
    first = text[: text.index(old)].count("\n") + 1
    return text.replace(old, new, 1), first, first + new.count("\n")


def _insert(original: str, line: object, text: object) -> tuple[str, int, int]:
    if not isinstance(text, str):
        raise EditorError("insert needs insert_text (the text to insert)")
    lines = _lines(original)
    if not isinstance(line, int) or isinstance(line, bool) or not 0 <= line <= len(lines):
        raise EditorError(f"insert_line must be a line number from 0 (top) to {len(lines)} (end of the file)")
    added = _lines(text) or [""]
    end = "\n" if original.endswith("\n") or not original else ""
    return "\n".join([*lines[:line], *added, *lines[line:]]) + end, line + 1, line + len(added)


def _children(fd: int) -> list[tuple[str, bool, bool]]:
    """(name, is a directory, is a symlink) of the visible entries of the directory `fd`, sorted; at most
    MAX_LISTED + 1 of the first 50 × MAX_LISTED read."""
    found: list[tuple[str, bool, bool]] = []
    with os.scandir(fd) as entries:
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
