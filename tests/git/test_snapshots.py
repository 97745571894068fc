"""Importing a staged tree: the worker writes only objects that hash to their id, with names git accepts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pygit2
import pytest

from app.core.errors import WorkspaceError
from app.core.ports import Staged, StageLimits
from app.git.snapshots import BLOB, TREE, ImportLimits, import_tree


def oid(kind: int, data: bytes) -> str:
    return hashlib.sha1({TREE: b"tree", BLOB: b"blob"}[kind] + b" %d\0" % len(data) + data).hexdigest()


def tree(*entries: tuple[int, bytes, str]) -> bytes:
    """Raw tree object data from (mode, name, id) entries, in git's order."""
    return b"".join(b"%o %s\0" % (mode, name) + bytes.fromhex(target) for mode, name, target in entries)


class Source:
    """A TreeSource that answers from a dict of crafted objects (what a broken or hostile sandbox could send)."""

    def __init__(self, store: dict[str, tuple[int, bytes]]) -> None:
        self.store = store

    async def stage(self, base: str, seed: bytes | None, limits: StageLimits) -> Staged:
        raise NotImplementedError

    async def objects(self, oids: list[str], max_bytes: int, budget: int) -> list[tuple[str, int, bytes]]:
        return [(o, *self.store[o]) for o in oids]


@pytest.fixture
def repo(tmp_path: Path) -> pygit2.Repository:
    return pygit2.init_repository(str(tmp_path / "repo.git"), bare=True)


def crafted(*items: tuple[int, bytes]) -> dict[str, tuple[int, bytes]]:
    return {oid(kind, data): (kind, data) for kind, data in items}


async def test_a_valid_tree_comes_in_and_only_missing_objects_are_asked(repo: pygit2.Repository) -> None:
    blob = b"hello\n"
    sub = tree((0o100644, b"x.txt", oid(BLOB, blob)))
    root = tree((0o100644, b"a.txt", oid(BLOB, blob)), (0o040000, b"src", oid(TREE, sub)))
    source = Source(crafted((BLOB, blob), (TREE, sub), (TREE, root)))
    assert await import_tree(repo, source, oid(TREE, root)) == 3
    assert repo[oid(TREE, root)].peel(pygit2.Tree)["src/x.txt"].peel(pygit2.Blob).data == blob
    assert await import_tree(repo, source, oid(TREE, root)) == 0, "nothing asked again"


@pytest.mark.parametrize(
    ("name", "mode", "why"),
    [
        (b"..", 0o100644, "could leave the work tree"),
        (b".", 0o040000, "could leave the work tree"),
        (b"a/b", 0o100644, "could leave the work tree"),
        (b".git", 0o040000, "reserves for its own folder"),
        (b".GIT", 0o100644, "reserves for its own folder"),
        (b".git. ", 0o100644, "reserves for its own folder"),
        (b"GIT~1", 0o040000, "reserves for its own folder"),
        (b".gitmodules", 0o120000, "as a symlink"),
        (b"caf\xe9", 0o100644, "not UTF-8"),
        (b"odd", 0o100600, "file mode"),
        (b"odd", 0o40, "file mode"),
    ],
)
async def test_a_tree_with_a_dangerous_name_or_mode_is_refused(
    repo: pygit2.Repository, name: bytes, mode: int, why: str
) -> None:
    blob = b"payload\n"
    root = tree((mode, name, oid(BLOB, blob)))
    source = Source(crafted((BLOB, blob), (TREE, root)))
    with pytest.raises(WorkspaceError, match=why):
        await import_tree(repo, source, oid(TREE, root))
    assert pygit2.Oid(hex=oid(BLOB, blob)) not in repo.odb, "nothing the bad tree names was fetched"


async def test_a_tree_out_of_git_order_or_with_a_name_twice_is_refused(repo: pygit2.Repository) -> None:
    blob = b"x\n"
    for root in (
        tree((0o100644, b"b", oid(BLOB, blob)), (0o100644, b"a", oid(BLOB, blob))),
        tree((0o100644, b"a", oid(BLOB, blob)), (0o100644, b"a", oid(BLOB, blob))),
        tree((0o100644, b"a", oid(BLOB, blob))) + b"100644 trunc",
    ):
        with pytest.raises(WorkspaceError, match=r"out of order|malformed"):
            await import_tree(repo, Source(crafted((BLOB, blob), (TREE, root))), oid(TREE, root))


async def test_an_object_that_does_not_match_its_id_or_type_is_not_stored(repo: pygit2.Repository) -> None:
    blob, forged = b"what the tree names\n", b"something else\n"
    root = tree((0o100644, b"a.txt", oid(BLOB, blob)))
    source = Source({**crafted((TREE, root)), oid(BLOB, blob): (BLOB, forged)})
    with pytest.raises(WorkspaceError, match="does not match its id"):
        await import_tree(repo, source, oid(TREE, root))
    assert pygit2.Oid(hex=oid(BLOB, forged)) not in repo.odb

    sub = tree((0o100644, b"x", oid(BLOB, blob)))
    root = tree((0o040000, b"dir", oid(TREE, sub)))
    source = Source({**crafted((TREE, root), (BLOB, blob)), oid(TREE, sub): (BLOB, sub)})
    with pytest.raises(WorkspaceError, match="came back as type"):
        await import_tree(repo, source, oid(TREE, root))


async def test_depth_count_and_size_are_bounded(tmp_path: Path) -> None:
    blob = b"x" * 1000
    inner = tree((0o100644, b"f", oid(BLOB, blob)))
    items = [(BLOB, blob), (TREE, inner)]
    current = inner
    for _ in range(5):
        current = tree((0o040000, b"d", oid(TREE, current)))
        items.append((TREE, current))
    source = Source(crafted(*items))
    for n, (limits, why) in enumerate(
        [
            (ImportLimits(max_depth=3), "deeper than 3 folders"),
            (ImportLimits(max_objects=3), "over 3 objects"),
            (ImportLimits(max_bytes=500), "over 500 bytes"),
        ]
    ):
        repo = pygit2.init_repository(str(tmp_path / f"repo{n}.git"), bare=True)
        with pytest.raises(WorkspaceError, match=why):
            await import_tree(repo, source, oid(TREE, current), limits)
    fresh = pygit2.init_repository(str(tmp_path / "fresh.git"), bare=True)
    assert await import_tree(fresh, source, oid(TREE, current)) == len(items)
