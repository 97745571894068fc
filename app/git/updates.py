"""A work tree brought from one tree to the next by writing only the entries that differ (the list
`app.git.trees.changes` makes), through folder descriptors: every folder on the way is opened relative
to its parent with O_NOFOLLOW, files are created with O_EXCL, so nothing is ever written through a
symlink, whatever either tree holds. What was written is returned with its stat data, for the index.

Only for a work tree that `check_out` wrote and nothing has touched since (a spare), whose entries are
exactly the old tree's, and only when nothing converts what is written (no `.gitattributes` on the
way, no gitlink, no end-of-line setting): then the raw blob is what libgit2's checkout would write.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pygit2

from app.core.errors import WorkspaceError
from app.git.trees import Entry, read_object

_FOLDER, _EXECUTABLE, _SYMLINK = 0o040000, 0o100755, 0o120000
_FILES = (0o100644, _EXECUTABLE)
_OPEN_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REPLACE = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO fails, never blocks


@dataclass(frozen=True)
class Written:
    """A file or symlink written at `path`: its mode and id in the tree, and its stat data on disk."""

    path: bytes
    mode: int
    oid: str
    stat: os.stat_result


def update_tree(dest: Path, odb: pygit2.Odb, entries: list[tuple[bytes, Entry | None, Entry | None]]) -> list[Written]:
    """Remove each old entry of `entries` from the work tree at `dest`, then write each new file and symlink
    (with the folders on their way; gitlinks are refused). OSError or WorkspaceError when the disk is not
    what the old tree says; the work tree is then in no known state."""
    folders = _Folders(dest)
    try:
        for path, old, new in reversed(entries):
            if old is not None and not (old[0] in _FILES and new is not None and new[0] in _FILES):
                parent, name = folders.parent_of(path)
                if old[0] != _FOLDER:
                    os.unlink(name, dir_fd=parent)
                else:  # a folder of empty folders only was never written, as libgit2 writes none
                    with contextlib.suppress(FileNotFoundError):
                        shutil.rmtree(name, dir_fd=parent)
        written = []
        for path, old, new in entries:
            if new is None or new[0] == _FOLDER:
                continue  # folders are made on the way to what they hold: an empty one is not written
            mode, oid = new
            parent, name = folders.parent_of(path)
            if mode in _FILES:
                replaced = old is not None and old[0] in _FILES
                written.append(Written(path, mode, oid, _write_file(parent, name, _blob(odb, oid), mode, replaced)))
            elif mode == _SYMLINK:
                os.symlink(_blob(odb, oid), name, dir_fd=parent)
                written.append(Written(path, mode, oid, os.stat(name, dir_fd=parent, follow_symlinks=False)))
            else:
                raise WorkspaceError(f"{path!r} has the mode {mode:o}, which this writer does not write")
        return written
    finally:
        folders.close()


def _write_file(parent: int, name: bytes, data: bytes, mode: int, replaced: bool) -> os.stat_result:
    """Write the file `name` in the folder `parent`: a new one, or over the one there (`replaced`), which
    must be a regular file (truncating in place costs a tenth of making a file on ext4)."""
    permissions = 0o755 if mode == _EXECUTABLE else 0o644
    fd = os.open(name, _REPLACE if replaced else _CREATE, permissions, dir_fd=parent)
    try:
        if replaced:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise WorkspaceError(f"{name!r} is not a regular file on disk, as the old tree says")
            executable = info.st_mode & 0o111 != 0
            if executable != (mode == _EXECUTABLE):  # as git does: execute where it may read, or nowhere
                bits = info.st_mode & 0o7666
                os.fchmod(fd, bits | (bits & 0o444) >> 2 if mode == _EXECUTABLE else bits)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return os.fstat(fd)
    finally:
        os.close(fd)


def _blob(odb: pygit2.Odb, oid: str) -> bytes:
    return read_object(odb, oid, pygit2.enums.ObjectType.BLOB)


class _Folders:
    """Descriptors of the folders on the way to the entry being written, each opened from its parent's
    without following a link (and made when missing). Only that one chain is kept open: the entries come
    in git's order, so a folder is left once for good, and a deep or wide tree holds no more descriptors
    than its depth."""

    def __init__(self, root: Path) -> None:
        self._chain: list[tuple[bytes, int]] = [(b"", os.open(root, _OPEN_FOLDER))]

    def parent_of(self, path: bytes) -> tuple[int, bytes]:
        folder, _, name = path.rpartition(b"/")
        names = folder.split(b"/") if folder else []
        kept = 1
        while kept < len(self._chain) and kept <= len(names) and self._chain[kept][0] == names[kept - 1]:
            kept += 1
        for _, fd in self._chain[kept:]:
            os.close(fd)
        del self._chain[kept:]
        for step in names[kept - 1 :]:
            parent = self._chain[-1][1]
            try:
                fd = os.open(step, _OPEN_FOLDER, dir_fd=parent)
            except FileNotFoundError:
                os.mkdir(step, 0o755, dir_fd=parent)
                fd = os.open(step, _OPEN_FOLDER, dir_fd=parent)
            self._chain.append((step, fd))
        return self._chain[-1][1], name

    def close(self) -> None:
        for _, fd in self._chain:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._chain.clear()
