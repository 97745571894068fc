"""Index files patched by bisection over their remembered layout: the same entries, in git's order, as an
index of the new tree, whether the layout is remembered, missing or stale; a folder's entries go and
its neighbours (`a.txt`, `a-b`, `a0`) stay."""

from __future__ import annotations

import os
from pathlib import Path

import pygit2
import pytest

from app.git.indexes import index_entry, patch_index, remember_layout

BEFORE = {"a.txt": "1", "a-b": "2", "a/b.txt": "3", "a/c/d.txt": "4", "a0": "5", "b.txt": "6", "z/y.txt": "7"}
AFTER = {"a.txt": "1", "a-b": "2", "a": "new file", "a0": "5", "b.txt": "changed", "c.txt": "added", "z/y.txt": "7"}


def build(repo: pygit2.Repository, files: dict[str, str]) -> pygit2.Oid:
    index = pygit2.Index()
    for path, text in files.items():
        index.add(pygit2.IndexEntry(path, repo.create_blob(text.encode()), pygit2.enums.FileMode.BLOB))
    return index.write_tree(repo)


def listed(index: Path) -> list[tuple[str, str]]:
    return [(entry.path, str(entry.id)) for entry in pygit2.Index(str(index))]


@pytest.mark.parametrize("layout", ["remembered", "missing", "stale"])
def test_a_patched_index_lists_the_new_tree(tmp_path: Path, layout: str) -> None:
    repo = pygit2.init_repository(str(tmp_path / "repo"), bare=True)
    index = tmp_path / "index"
    old = pygit2.Index(str(index))
    old.read_tree(repo[build(repo, BEFORE)].peel(pygit2.Tree))
    old.write()
    remember_layout(index)
    if layout == "missing":
        next(tmp_path.glob("routines-*")).unlink()
    elif layout == "stale":
        remembered = next(tmp_path.glob("routines-*"))
        remembered.write_bytes(os.urandom(20) + remembered.read_bytes()[20:])

    info = os.stat(index)
    written = [
        (path.encode(), index_entry(path.encode(), 0o100644, str(repo.create_blob(AFTER[path].encode())), info))
        for path in ("a", "b.txt", "c.txt")
    ]
    patch_index(index, [(b"a", True)], written)

    expected = pygit2.Index()
    expected.read_tree(repo[build(repo, AFTER)].peel(pygit2.Tree))
    assert listed(index) == [(entry.path, str(entry.id)) for entry in expected]
    assert next(iter(pygit2.Index(str(index)))).path == "a", "sorted as git sorts: a < a-b < a.txt < a0"

    patch_index(index, [(b"z", True)], [])  # the layout the patch left is right for the next one
    assert [path for path, _ in listed(index)] == ["a", "a-b", "a.txt", "a0", "b.txt", "c.txt"]
