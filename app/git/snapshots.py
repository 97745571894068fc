"""Bring a tree staged inside the sandbox into a repository of the worker, object by object, each checked.

The worker never reads the agent's work tree. It asks the sandbox (a `TreeSource`) to stage it,
then walks the new tree from its root and asks for each tree and blob its repository lacks. An
object is written only when its content hashes to the id it was asked for and has the type its
parent tree says; one the repository already has (from the mirror) must have that type too. Trees
are parsed here, not by libgit2: git's file modes only, entries in git's order and each once, names
that are UTF-8 and cannot climb out of a work tree or into `.git` (`.`, `..`, `/`, NUL, `.git` in
any case, with trailing dots or spaces, HFS+-ignored characters or an NTFS stream, `git~1`); no
`.gitmodules` symlink; bounded depth, count and bytes, asked for before anything is read. A bad
object stops the import with WorkspaceError before anything refers to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import operator
import re
from dataclasses import dataclass

import pygit2

from app.core.errors import WorkspaceError
from app.core.ports import TreeSource

TREE, BLOB = pygit2.enums.ObjectType.TREE.value, pygit2.enums.ObjectType.BLOB.value
_TYPE_NAMES = {TREE: b"tree", BLOB: b"blob"}
_NAMES = {1: "commit", TREE: "tree", BLOB: "blob", 4: "tag"}
_HEX = re.compile(r"[0-9a-f]{40}")
# Characters HFS+ ignores in names (so ".g\u200cit" is ".git" on a Mac checkout).
_HFS_IGNORED = re.compile("[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]")
_MODES = {0o040000: TREE, 0o100644: BLOB, 0o100755: BLOB, 0o120000: BLOB}
_GITLINK, _SYMLINK = 0o160000, 0o120000
_BATCH = 256
# One tree entry: its mode, a space, its name, a NUL and its 20-byte id.
_ENTRY = re.compile(rb"(\d+) ([^\0]*)\0(.{20})", re.DOTALL)
_WRITTEN = {b"100644", b"100755", b"120000", b"40000", b"160000"}


@dataclass(frozen=True)
class ImportLimits:
    max_objects: int = 1_000_000
    max_bytes: int = 2 * 1024**3
    max_object_bytes: int = 101 * 1024 * 1024  # a file's limit, and room for a tree of a very wide folder
    max_depth: int = 512


async def import_tree(
    repo: pygit2.Repository, source: TreeSource, tree: str, limits: ImportLimits | None = None
) -> int:
    """Copy into `repo` every object of `tree` it lacks, from `source`; returns how many were copied."""
    limits = limits or ImportLimits()
    if not _HEX.fullmatch(tree):
        raise WorkspaceError(f"the sandbox named the tree {tree!r}, which is no object id")
    pending = [] if await asyncio.to_thread(_has, repo, tree, TREE) else [(tree, TREE, 0)]
    copied = size = 0
    while pending:
        batch, pending = pending[:_BATCH], pending[_BATCH:]
        copied += len(batch)
        if copied > limits.max_objects:
            raise WorkspaceError(f"the work tree's snapshot is over {limits.max_objects:,} objects")
        try:
            found = await source.objects([oid for oid, _, _ in batch], limits.max_object_bytes, limits.max_bytes - size)
        except WorkspaceError as exc:
            raise WorkspaceError(
                f"the work tree's snapshot is over {limits.max_bytes:,} bytes or broken: {exc}"
            ) from None
        if [oid for oid, _, _ in found] != [oid for oid, _, _ in batch]:
            raise WorkspaceError("the sandbox answered other objects than the ones asked for")
        size += sum(len(data) for _, _, data in found)
        if size > limits.max_bytes or any(len(data) > limits.max_object_bytes for _, _, data in found):
            raise WorkspaceError(f"the work tree's snapshot is over {limits.max_bytes:,} bytes or holds too big a file")
        pending += await asyncio.to_thread(_write, repo, batch, found, limits.max_depth)
    return copied


def _has(repo: pygit2.Repository, oid: str, kind: int) -> bool:
    """Whether `repo` has object `oid`, which must then be of type `kind` (WorkspaceError otherwise)."""
    try:
        found, _ = repo.odb.read_header(oid)
    except KeyError:
        return False
    if int(found) != kind:
        raise WorkspaceError(f"object {oid} is a {_NAMES.get(int(found), found)}, where its tree says {_NAMES[kind]}")
    return True


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
        if not _has(repo, target, kind):
            wanted.append((target, kind, depth + 1))
    return wanted


def tree_entries(data: bytes) -> list[tuple[int, bytes, str]]:
    """(mode, name, id) of a raw tree object, checked as git's fsck would: known modes written without
    leading zeros, names in git's order and each once."""
    return [(int(mode, 8), name, oid.hex()) for mode, name, oid in raw_tree_entries(data)]


def raw_tree_entries(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """`tree_entries` as the tree writes them: mode digits, name and the id's 20 bytes. The checks run
    over whole columns (a tree of files is checked without a Python step per entry)."""
    found = _ENTRY.findall(data)
    if not found:
        return [] if not data else _raw(_entries_one_by_one(data))
    modes, names, _ = zip(*found, strict=True)
    if 22 * len(found) + sum(map(len, modes)) + sum(map(len, names)) == len(data) and set(modes) <= _WRITTEN:
        keys = names  # a folder sorts as if its name ended in a slash
        if b"40000" in modes:
            keys = tuple(n + b"/" if m == b"40000" else n for m, n in zip(modes, names, strict=True))
        if all(map(operator.lt, keys, keys[1:])) and len(set(names)) == len(names):
            return found
    return _raw(_entries_one_by_one(data))


def _raw(entries: list[tuple[int, bytes, str]]) -> list[tuple[bytes, bytes, bytes]]:
    return [(b"%o" % mode, name, bytes.fromhex(oid)) for mode, name, oid in entries]


def _entries_one_by_one(data: bytes) -> list[tuple[int, bytes, str]]:
    """`tree_entries` read entry by entry, to say what is wrong with a tree the fast reading refused."""
    entries: list[tuple[int, bytes, str]] = []
    seen: set[bytes] = set()
    at, previous = 0, b""
    while at < len(data):
        space, nul = data.find(b" ", at), data.find(b"\0", at)
        if space < 0 or nul < space or nul + 21 > len(data):
            raise WorkspaceError("a tree object is malformed")
        raw_mode, name = data[at:space], data[space + 1 : nul]
        mode = int(raw_mode, 8) if raw_mode in _WRITTEN else -1
        if mode not in (*_MODES, _GITLINK):
            raise WorkspaceError(
                f"{name!r} has the file mode {raw_mode.decode(errors='replace')}, which git does not write"
            )
        key = name + b"/" if mode == 0o040000 else name
        if (entries and key <= previous) or name in seen:
            raise WorkspaceError(f"a tree lists {name!r} out of order or twice")
        previous = key
        seen.add(name)
        entries.append((mode, name, data[nul + 1 : nul + 21].hex()))
        at = nul + 21
    return entries


def check_name(raw: bytes, mode: int) -> None:
    """WorkspaceError unless `raw` is a tree entry name git and every checkout accept."""
    if raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw:
        raise WorkspaceError(f"a tree holds the entry name {raw!r}, which could leave the work tree")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise WorkspaceError(f"a tree holds the name {raw!r}, which is not UTF-8") from None
    folded = _HFS_IGNORED.sub("", text).lower().split("::$", 1)[0].rstrip(". ")
    if folded in (".git", "git~1"):
        raise WorkspaceError(f"a tree holds {raw!r}, a name git reserves for its own folder")
    if folded == ".gitmodules" and mode == _SYMLINK:
        raise WorkspaceError("a tree holds .gitmodules as a symlink, which git refuses")
