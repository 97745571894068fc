"""Stage the work tree into git objects, inside the sandbox, so the worker only copies objects.

A private git directory (`gitdir`, which only this process writes) has the workspace as its work
tree and borrows the mirror's objects. Each `stage` asks libgit2 what changed since the last one
(its index keeps the stat data, so unchanged files are not read again), adds what may be added and
writes the tree. `.gitignore` applies as in git; FIFOs, sockets and devices are skipped by libgit2;
a file over `max_file_bytes`, a name that is not UTF-8, or new content past `max_total_bytes` is
left out and reported, never half-staged. The worker then asks for the objects it lacks by id and
checks each one against its id, so nothing here can make it store anything but git objects.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from typing import Any

import pygit2

_WRITTEN = pygit2.enums.FileStatus.WT_NEW | pygit2.enums.FileStatus.WT_MODIFIED | pygit2.enums.FileStatus.WT_TYPECHANGE
_SENDABLE = {pygit2.enums.ObjectType.TREE.value, pygit2.enums.ObjectType.BLOB.value}
_NO_SEARCH = pygit2.enums.RepositoryOpenFlag.NO_SEARCH
MAX_DEPTH = 90  # libgit2 refuses paths nested deeper than 100 folders
IGNORED = "routines-ignored"  # top-level names the setup made, one per line
GIT_FILE_BYTES = 1024 * 1024


class StageError(Exception):
    """Staging cannot go on; the message says why."""


class Stager:
    """Stages `workspace` through the private git directory `gitdir`, borrowing objects from `alternates`."""

    def __init__(self, workspace: str, gitdir: str, alternates: list[str]) -> None:
        self.workspace = workspace
        self.gitdir = gitdir
        self.alternates = alternates
        self._base: str | None = None
        self._repo: pygit2.Repository | None = None

    def stage(
        self,
        base: str,
        *,
        seed: bytes | None = None,
        max_file_bytes: int,
        max_total_bytes: int,
        max_files: int,
    ) -> dict[str, Any]:
        """Stage every change since `base` (a commit id); {"tree", "files", "skipped": [{path, reason}]}."""
        repo = self._open(base, seed)
        index = repo.index
        skipped: list[dict[str, str]] = []
        total = 0
        problem = _unreadable_git_file(self.workspace, repo)
        if problem is not None:
            raise StageError(problem)
        changed = self._status(repo, skipped)
        if len(changed) > max_files:
            raise StageError(f"{len(changed):,} files changed, over the {max_files:,} a run may commit")
        for path, flags in sorted(changed.items()):
            try:
                path.encode()
            except UnicodeEncodeError:
                skipped.append({"path": _printable(path), "reason": "its name is not UTF-8"})
                continue
            if flags & pygit2.enums.FileStatus.WT_DELETED:
                if path in index:
                    index.remove(path)
                continue
            if not flags & _WRITTEN:
                continue
            if path.endswith("/"):
                skipped.append({"path": path, "reason": "a git repository of its own inside the workspace"})
                continue
            size = _size(os.path.join(self.workspace, path))
            reason = _too_big(size, total, max_file_bytes, max_total_bytes)
            if reason is None:
                before = _entry(index, path)
                try:
                    index.add(path)
                except (OSError, ValueError, pygit2.GitError) as exc:
                    reason = f"could not be read ({exc})"
                else:  # the file may have grown since it was measured: what was read counts
                    size = repo.odb.read_header(index[path].id)[1]
                    reason = _too_big(size, total, max_file_bytes, max_total_bytes)
                    if reason is not None and before is not None:
                        index.add(before)
                    elif reason is not None:
                        index.remove(path)
            if reason is not None:
                skipped.append({"path": path, "reason": reason})
                continue
            total += size
        if len(index) > max_files:
            raise StageError(f"the workspace holds {len(index):,} files, over the {max_files:,} a run may commit")
        index.write()
        return {"tree": str(index.write_tree()), "files": len(index), "skipped": skipped}

    def _status(self, repo: pygit2.Repository, skipped: list[dict[str, str]]) -> dict[str, int]:
        """What changed. libgit2 refuses a tree nested deeper than it allows: the folders past MAX_DEPTH
        are then left out (ignored, and reported) and the rest is staged."""
        self._exclude([])
        try:
            return dict(repo.status(untracked_files="all"))
        except pygit2.GitError as exc:
            if "nesting too deep" not in str(exc):
                raise
        deep = _too_deep(self.workspace, MAX_DEPTH)
        self._exclude(deep)
        skipped += [{"path": _printable(p), "reason": f"nested deeper than {MAX_DEPTH} folders"} for p in deep]
        return dict(repo.status(untracked_files="all"))

    def ignore(self, names: list[str]) -> None:
        """Never stage these top-level entries of the work tree (what an environment's setup made)."""
        kept = [n for n in names if n and "/" not in n and "\n" not in n and n not in (".", "..", ".git")]
        with open(os.path.join(self.gitdir, IGNORED), "w") as out:
            out.write("".join(f"{name}\n" for name in kept))

    def _exclude(self, paths: list[str]) -> None:
        patterns = "".join(f"/{_escape(p)}/\n" for p in paths if "\n" not in p)
        try:
            with open(os.path.join(self.gitdir, IGNORED)) as listed:
                patterns += "".join(f"/{_escape(name)}\n" for name in listed.read().splitlines() if name)
        except FileNotFoundError:
            pass
        with open(os.path.join(self.gitdir, "info", "exclude"), "w") as out:
            out.write("/.git\n" + patterns)

    def objects(self, oids: list[str], max_bytes: int) -> list[tuple[str, int, bytes]]:
        """(id, type, raw data) of each tree or blob in `oids`; StageError for anything else, or for an
        object over `max_bytes`."""
        repo = self._repo
        if repo is None:
            raise StageError("nothing was staged yet; stage before asking for objects")
        found = []
        for oid in oids:
            try:
                kind, data = repo.odb.read(oid)
            except (KeyError, ValueError, pygit2.GitError):
                raise StageError(f"object {oid} is not here") from None
            if kind not in _SENDABLE:
                raise StageError(f"object {oid} is not a tree or a blob")
            if len(data) > max_bytes:
                raise StageError(f"object {oid} is {len(data):,} bytes, over the {max_bytes:,} asked for")
            found.append((oid, int(kind), data))
        return found

    def _open(self, base: str, seed: bytes | None) -> pygit2.Repository:
        if self._repo is not None and base == self._base:
            return self._repo
        if not os.path.isfile(os.path.join(self.gitdir, "HEAD")):
            _init(self.gitdir, self.workspace, self.alternates)
        with open(os.path.join(self.gitdir, "HEAD"), "w") as head:
            head.write(f"{base}\n")
        seeded = _own_stat(seed) if seed else None
        if seeded is not None:
            with open(os.path.join(self.gitdir, "index"), "wb") as out:
                out.write(seeded)
        repo = pygit2.Repository(self.gitdir, _NO_SEARCH)
        if seeded is None:
            try:
                tree = repo[base].peel(pygit2.Tree)
            except (KeyError, ValueError, pygit2.GitError):
                raise StageError(f"the base commit {base} is not in the mirror this sandbox sees") from None
            repo.index.read_tree(tree)
            repo.index.write()
        self._repo, self._base = repo, base
        return repo


def _init(gitdir: str, workspace: str, alternates: list[str]) -> None:
    for sub in ("objects/info", "objects/pack", "refs/heads", "refs/tags", "info"):
        os.makedirs(os.path.join(gitdir, sub), exist_ok=True)
    with open(os.path.join(gitdir, "objects", "info", "alternates"), "w") as out:
        out.write("".join(f"{path}\n" for path in alternates))
    with open(os.path.join(gitdir, "config"), "w") as out:
        out.write(
            "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
            f"\tsymlinks = true\n\tworktree = {workspace}\n"
        )
    with open(os.path.join(gitdir, "HEAD"), "w") as out:
        out.write("ref: refs/heads/unborn\n")


def _too_deep(root: str, depth: int) -> list[str]:
    """The folders exactly `depth` levels below `root` (relative, as git names them); links not followed."""
    found = []
    for folder, dirs, _ in os.walk(root):
        relative = os.path.relpath(folder, root)
        level = 0 if relative == "." else relative.count("/") + 1
        if relative == ".":
            dirs[:] = [d for d in dirs if d != ".git"]
        if level >= depth:
            found.append(relative)
            dirs.clear()
    return found


def _escape(path: str) -> str:
    """`path` as a gitignore pattern that matches only itself."""
    escaped = "".join(f"\\{c}" if c in "*?[]\\!#" else c for c in path)
    return escaped[:-1] + "\\ " if escaped.endswith(" ") else escaped


def _too_big(size: int, total: int, max_file_bytes: int, max_total_bytes: int) -> str | None:
    if size > max_file_bytes:
        return f"{size:,} bytes, over the {max_file_bytes:,} a file may have"
    if total + size > max_total_bytes:
        return f"over the {max_total_bytes:,} bytes one snapshot may add"
    return None


def _unreadable_git_file(root: str, repo: pygit2.Repository) -> str | None:
    """Why libgit2 must not read the tree's `.gitignore`/`.gitattributes` (or the top `.gitmodules`): one
    that is a FIFO would block it, a symlink could name /dev/zero, a huge one fill memory. Walks the
    folders libgit2 walks (not the ignored ones), checking each folder's files before asking about
    its subfolders. None when they are all plain files of at most GIT_FILE_BYTES."""
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            with os.scandir(os.path.join(root, relative)) as found:
                entries = {entry.name: entry for entry in found}
        except OSError:
            continue
        names = (".gitignore", ".gitattributes", ".gitmodules") if not relative else (".gitignore", ".gitattributes")
        for name in names:
            if name in entries:
                info = entries[name].stat(follow_symlinks=False)
                if not stat.S_ISREG(info.st_mode) or info.st_size > GIT_FILE_BYTES:
                    where = f"{relative}/{name}" if relative else name
                    return (
                        f"{_printable(where)} is not a plain file of at most {GIT_FILE_BYTES:,} bytes, so git "
                        "cannot read it; make it a regular text file or remove it"
                    )
        if relative.count("/") + 1 >= MAX_DEPTH:
            continue
        for name, entry in entries.items():
            if name == ".git" or not entry.is_dir(follow_symlinks=False) or ".git" in _names(entry.path):
                continue
            child = f"{relative}/{name}" if relative else name
            if not repo.path_is_ignored(child + "/"):
                pending.append(child)
    return None


def _entry(index: pygit2.Index, path: str) -> pygit2.IndexEntry | None:
    try:
        return index[path]
    except KeyError:
        return None


def _names(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder)) & {".git"}
    except OSError:
        return set()


def _size(path: str) -> int:
    try:
        info = os.lstat(path)
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def _own_stat(index: bytes) -> bytes | None:
    """A git index (v2/v3) with every entry's uid and gid set to this process's, so libgit2's stat
    cache matches the files as this sandbox sees them; None when the format is not one of those."""
    if len(index) < 32 or index[:4] != b"DIRC":
        return None
    version, count = struct.unpack(">II", index[4:12])
    if version not in (2, 3):
        return None
    data = bytearray(index[:-20])
    owner = struct.pack(">II", os.getuid() & 0xFFFFFFFF, os.getgid() & 0xFFFFFFFF)
    at = 12
    for _ in range(count):
        if at + 62 > len(data):
            return None
        flags = struct.unpack(">H", data[at + 60 : at + 62])[0]
        fixed = 64 if version == 3 and flags & 0x4000 else 62
        name = flags & 0x0FFF
        if name == 0x0FFF:
            end = data.find(b"\0", at + fixed)
            if end < 0:
                return None
            name = end - at - fixed
        data[at + 28 : at + 36] = owner
        at += (fixed + name + 8) & ~7
    return bytes(data) + hashlib.sha1(data).digest()


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
