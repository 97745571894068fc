"""Bring a tree staged inside the sandbox into a repository of the worker, object by object, each checked.

The worker never reads the agent's work tree. It asks the sandbox (a `TreeSource`) to stage it,
then walks the new tree from its root and asks for each tree and blob its repository lacks. An
object is written only when its content hashes to the id it was asked for and has the type its
parent tree says. Trees are checked as they arrive: git's file modes only; names that are UTF-8
and cannot climb out of a work tree or into `.git` (`.`, `..`, `/`, NUL, `.git` in any case or
with trailing dots and spaces, `git~1`); no `.gitmodules` symlink; bounded depth, count and bytes.
A bad object stops the import with WorkspaceError before anything refers to it.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import pygit2

from app.errors import WorkspaceError
from app.ports import TreeSource

TREE, BLOB = pygit2.enums.ObjectType.TREE.value, pygit2.enums.ObjectType.BLOB.value
_TYPE_NAMES = {TREE: b"tree", BLOB: b"blob"}
_MODES = {0o040000: TREE, 0o100644: BLOB, 0o100755: BLOB, 0o120000: BLOB}
_GITLINK, _SYMLINK = 0o160000, 0o120000
_BATCH = 256


@dataclass(frozen=True)
class ImportLimits:
    max_objects: int = 1_000_000
    max_bytes: int = 3 * 1024**3
    max_depth: int = 512


async def import_tree(
    repo: pygit2.Repository, source: TreeSource, tree: str, limits: ImportLimits | None = None
) -> int:
    """Copy into `repo` every object of `tree` it lacks, from `source`; returns how many were copied."""
    limits = limits or ImportLimits()
    pending = [] if await asyncio.to_thread(_has, repo, tree) else [(tree, TREE, 0)]
    copied = size = 0
    while pending:
        batch, pending = pending[:_BATCH], pending[_BATCH:]
        found = await source.objects([oid for oid, _, _ in batch])
        if [oid for oid, _, _ in found] != [oid for oid, _, _ in batch]:
            raise WorkspaceError("the sandbox answered other objects than the ones asked for")
        size += sum(len(data) for _, _, data in found)
        copied += len(found)
        if copied > limits.max_objects or size > limits.max_bytes:
            raise WorkspaceError(
                f"the work tree's snapshot is over {limits.max_objects:,} objects or {limits.max_bytes:,} bytes"
            )
        pending += await asyncio.to_thread(_write, repo, batch, found, limits.max_depth)
    return copied


def _has(repo: pygit2.Repository, oid: str) -> bool:
    return pygit2.Oid(hex=oid) in repo.odb


def _write(
    repo: pygit2.Repository,
    batch: list[tuple[str, int, int]],
    found: list[tuple[str, int, bytes]],
    max_depth: int,
) -> list[tuple[str, int, int]]:
    """Verify and write one batch; the objects its trees name that `repo` still lacks."""
    more: list[tuple[str, int, int]] = []
    for (oid, kind, depth), (_, got, data) in zip(batch, found, strict=True):
        if got != kind:
            raise WorkspaceError(f"object {oid} came back as type {got}, where its tree says type {kind}")
        digest = hashlib.sha1(_TYPE_NAMES[kind] + b" %d\0" % len(data) + data).hexdigest()
        if digest != oid:
            raise WorkspaceError(f"object {oid} does not match its id (it hashes to {digest}); not stored")
        repo.odb.write(kind, data)
        if kind == TREE:
            more += _children(repo, oid, depth, max_depth)
    return more


def _children(repo: pygit2.Repository, oid: str, depth: int, max_depth: int) -> list[tuple[str, int, int]]:
    """The objects tree `oid` names that `repo` lacks. The raw entries are read here, not through libgit2,
    which would quietly normalise a file mode git's fsck refuses."""
    wanted = []
    for mode, name, target in tree_entries(repo.odb.read(oid)[1]):
        check_name(name, mode)
        if mode == _GITLINK:
            continue
        kind = _MODES[mode]
        if kind == TREE and depth + 1 > max_depth:
            raise WorkspaceError(f"the work tree is nested deeper than {max_depth} folders")
        if pygit2.Oid(hex=target) not in repo.odb:
            wanted.append((target, kind, depth + 1))
    return wanted


def tree_entries(data: bytes) -> list[tuple[int, bytes, str]]:
    """(mode, name, id) of a raw tree object, checked as git's fsck would: known modes written without
    leading zeros, names in git's order and each once."""
    entries: list[tuple[int, bytes, str]] = []
    at, previous = 0, b""
    while at < len(data):
        space, nul = data.find(b" ", at), data.find(b"\0", at)
        if space < 0 or nul < space or nul + 21 > len(data):
            raise WorkspaceError("a tree object is malformed")
        raw_mode, name = data[at:space], data[space + 1 : nul]
        mode = int(raw_mode, 8) if raw_mode.isdigit() and not raw_mode.startswith(b"0") else -1
        if mode not in (*_MODES, _GITLINK):
            raise WorkspaceError(
                f"{name!r} has the file mode {raw_mode.decode(errors='replace')}, which git does not write"
            )
        key = name + b"/" if mode == 0o040000 else name
        if entries and key <= previous:
            raise WorkspaceError(f"a tree lists {name!r} out of order or twice")
        previous = key
        entries.append((mode, name, data[nul + 1 : nul + 21].hex()))
        at = nul + 21
    return entries


def check_name(raw: bytes, mode: int) -> None:
    """WorkspaceError unless `raw` is a tree entry name git and every checkout accept."""
    if raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw:
        raise WorkspaceError(f"a tree holds the entry name {raw!r}, which could leave the work tree")
    folded = raw.lower().rstrip(b". ")
    if folded in (b".git", b"git~1"):
        raise WorkspaceError(f"a tree holds {raw!r}, a name git reserves for its own folder")
    if folded == b".gitmodules" and mode == _SYMLINK:
        raise WorkspaceError("a tree holds .gitmodules as a symlink, which git refuses")
    try:
        raw.decode()
    except UnicodeDecodeError:
        raise WorkspaceError(f"a tree holds the name {raw!r}, which is not UTF-8") from None
