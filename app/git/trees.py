"""Trees read for checkouts, object by object: whether a tree holds submodules (gitlinks), how to split
a big tree between writers, and which paths differ between two trees, with the new tree's changed
folders checked as snapshots are."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pygit2

from app.core.errors import WorkspaceError
from app.git.snapshots import check_name, raw_tree_entries, tree_entries

_FOLDER, _GITLINK = 0o040000, 0o160000
_ATTRIBUTES = b".gitattributes"


Entry = tuple[int, str]
"""A tree entry's mode and id."""


@dataclass(frozen=True)
class Changes:
    """What a checkout from one tree to another must write or remove.

    `paths` name files, symlinks and gitlinks, and whole folders that appear or go; `sensitive` says
    a gitlink or a `.gitattributes` is among them, which libgit2 handles only with the work tree open.
    `entries` lists the same change entry by entry, as (path, old entry, new entry), a missing side
    None: a folder that goes is one entry, a folder that comes is one entry followed by each of its
    own, and folders on both sides are never listed (what differs inside them is). `filtered` says a
    folder on the way to a changed entry holds a `.gitattributes`, which may convert what is written.
    """

    paths: list[str]
    sensitive: bool
    entries: list[tuple[bytes, Entry | None, Entry | None]] = field(default_factory=list)
    filtered: bool = False


def has_gitlinks(odb: pygit2.Odb, tree: str) -> bool:
    """Whether `tree` holds a gitlink at any depth. A folder of files only is skipped by a substring
    test, so a 50,000-file tree takes milliseconds; a tree that cannot be read counts as holding one."""
    pending = [tree]
    while pending:
        try:
            data = odb.read(pending.pop())[1]
            if b"40000 " not in data and b"160000 " not in data:
                continue
            for mode, _, oid in _raw_entries(data):
                if mode == _GITLINK:
                    return True
                if mode == _FOLDER:
                    pending.append(oid)
        except (KeyError, ValueError, pygit2.GitError):
            return True
    return False


def split(odb: pygit2.Odb, tree: str, parts: int, min_bytes: int) -> list[list[str]] | None:
    """The paths of disjoint parts of `tree` (folders or entries), in `parts` groups of about equal size
    (the bytes of their tree objects, which grow with their entries), so that as many checkouts limited
    to one group each write the whole tree. None when the tree holds a gitlink, is smaller than
    `min_bytes`, or a folder the parts are cut from fails the snapshot checks (git's modes and order,
    each name once, no name into `.git`): there every name is once, so no group can reach another's
    paths through a symlink, and inside its parts each checkout guards itself as usual."""
    try:
        weight, ids = _weigh(odb, tree)
        if weight is None or weight[b""] < min_bytes:
            return None
        units = _cut(odb, tree, b"", weight)
        while (largest := max(units))[0] > weight[b""] // (parts * 4) and largest[1] in ids:
            units.remove(largest)
            units += _cut(odb, ids[largest[1]], largest[1], weight)
        sizes = [0] * parts
        groups: list[list[str]] = [[] for _ in range(parts)]
        for size, path in sorted(units, reverse=True):
            at = sizes.index(min(sizes))
            sizes[at] += size
            groups[at].append(_text(path.rstrip(b"/")))
    except (WorkspaceError, ValueError):
        return None
    return [group for group in groups if group]


def _weigh(odb: pygit2.Odb, tree: str) -> tuple[dict[bytes, int] | None, dict[bytes, str]]:
    """The bytes of tree objects under each folder ("" the root, "a/b/" below), or None with a gitlink;
    and each folder's tree id. Folders of files only are not parsed (a substring test tells them)."""
    weight: dict[bytes, int] = {}
    ids, parents = {b"": tree}, {b"": b""}
    folders = [b""]
    for path in folders:  # grows while it is read: every folder, parents first
        data = _read(odb, ids[path])
        weight[path] = len(data)
        if b"40000 " not in data and b"160000 " not in data:
            continue
        for mode, name, child in _raw_entries(data):
            if mode == _GITLINK:
                return None, ids
            if mode == _FOLDER:
                folders.append(path + name + b"/")
                ids[path + name + b"/"], parents[path + name + b"/"] = child, path
    for path in reversed(folders[1:]):
        weight[parents[path]] += weight[path]
    return weight, ids


def _cut(odb: pygit2.Odb, tree: str, prefix: bytes, weight: dict[bytes, int]) -> list[tuple[int, bytes]]:
    """(size, path) of each entry of the folder `prefix`, read with the snapshot checks."""
    units = []
    for mode, name, _ in _entries(odb, tree):
        check_name(name, mode)
        path = prefix + name + (b"/" if mode == _FOLDER else b"")
        units.append((weight[path] if mode == _FOLDER else len(name) + 28, path))
    return units


def changes(odb: pygit2.Odb, old: str, new: str) -> Changes:
    """The paths that differ from tree `old` to tree `new`. Every folder of `new` that differs from
    `old` is read whole and must pass the checks snapshots apply (git's modes and order, each name
    once; no entry that differs from `old` may climb out or into `.git`), else WorkspaceError: a
    duplicate name can make a path of the new tree go through a symlink the old one left, which a
    checkout of only the changed paths would follow."""
    paths: list[str] = []
    entries: list[tuple[bytes, Entry | None, Entry | None]] = []
    sensitive = filtered = False
    pending: list[tuple[str | None, str, bytes, bool]] = [(old, new, b"", False)]
    while pending:
        before_oid, after_oid, prefix, covered = pending.pop()
        data = _read(odb, after_oid)
        filtered |= b" " + _ATTRIBUTES + b"\0" in data  # also when another name ends so: then only slower
        after = raw_tree_entries(data)
        before = raw_tree_entries(_read(odb, before_oid)) if before_oid else []
        was_at = {name: (mode, oid) for mode, name, oid in before}
        for raw_mode, name, raw_oid in set(after).difference(before):  # what the old tree lacks as it is
            mode, oid = int(raw_mode, 8), raw_oid.hex()
            check_name(name, mode)
            found = was_at.pop(name, None)
            was = (int(found[0], 8), found[1].hex()) if found else None
            if was is not None and was[0] == mode == _FOLDER:
                pending.append((was[1], oid, prefix + name + b"/", covered))
                continue
            entries.append((prefix + name, was, (mode, oid)))
            if not covered:
                paths.append(_text(prefix + name))
            if mode == _FOLDER:
                pending.append((None, oid, prefix + name + b"/", True))
            sensitive |= _GITLINK in (mode, was[0] if was else None) or name == _ATTRIBUTES
            sensitive |= was is not None and was[0] == _FOLDER and has_gitlinks(odb, was[1])
        for name in set(was_at).difference(name for _, name, _ in after):
            mode, oid = int(was_at[name][0], 8), was_at[name][1].hex()
            entries.append((prefix + name, (mode, oid), None))
            paths.append(_text(prefix + name))
            sensitive |= mode == _GITLINK or name == _ATTRIBUTES or (mode == _FOLDER and has_gitlinks(odb, oid))
    return Changes(sorted(paths), sensitive, sorted(entries), filtered)


def _entries(odb: pygit2.Odb, tree: str) -> list[tuple[int, bytes, str]]:
    return tree_entries(_read(odb, tree))


def _read(odb: pygit2.Odb, tree: str) -> bytes:
    return read_object(odb, tree, pygit2.enums.ObjectType.TREE)


def read_object(odb: pygit2.Odb, oid: str, kind: pygit2.enums.ObjectType) -> bytes:
    """The raw data of object `oid`, which must be of `kind`; WorkspaceError when missing or of another kind."""
    what = kind.name.lower()
    try:
        found, data = odb.read(oid)
    except (KeyError, ValueError, pygit2.GitError):
        raise WorkspaceError(f"{what} {oid} is not in the mirror") from None
    if found != kind:
        raise WorkspaceError(f"object {oid} is not a {what}")
    return bytes(data)


def _raw_entries(data: bytes) -> Iterator[tuple[int, bytes, str]]:
    """(mode, name, id) of a raw tree, read leniently (ValueError if malformed)."""
    at = 0
    while at < len(data):
        nul = data.index(b"\0", at)
        mode, space, name = data[at:nul].partition(b" ")
        if not space or nul + 21 > len(data):
            raise ValueError("a tree object is malformed")
        yield int(mode, 8), name, data[nul + 1 : nul + 21].hex()
        at = nul + 21


def _text(path: bytes) -> str:
    try:
        return path.decode()
    except UnicodeDecodeError:
        raise WorkspaceError(f"the path {path!r} is not UTF-8") from None
