"""Index files (app.git.indexes). Joining two indexes of one tree: each entry under the given parts comes
from the other index, every other entry stays, including names that sort right beside a part (`a-b`,
`a.txt`, `a0`). Patching by bisection over the remembered layout: the same entries, in git's order, as an
index of the new tree, whether the layout is remembered, missing or stale; a folder's entries go and its
neighbours stay."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pygit2
import pytest

from app.core.errors import WorkspaceError
from app.git.indexes import index_entry, join_indexes, patch_index, remember_layout
from tests.support.git import GIT_ENV, commit_file, git

NAMES = ["a-b", "a.txt", "a/c", "a/d/e", "a0", "b/x", "top.txt", "z"]


def inodes(index: Path, repo: Path) -> dict[str, int]:
    """Each path of the index file `index` and the inode its stat data names (git's own reading)."""
    env = {**GIT_ENV, "GIT_INDEX_FILE": str(index)}
    done = subprocess.run(["git", "ls-files", "--debug"], cwd=repo, env=env, check=True, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    return {name: int(line.split("ino:")[1]) for name, line in zip(lines[::6], lines[3::6], strict=True)}


@pytest.fixture
def two_indexes(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(work tree one, its index, work tree two, its index): one commit, each index refreshed on its own copy."""
    one = tmp_path / "one"
    git("init", "-q", "-b", "main", str(one))
    for name in NAMES:
        commit_file(one, name, f"{name}\n")
    two = tmp_path / "two"
    shutil.copytree(one, two, ignore=shutil.ignore_patterns(".git"))
    other = tmp_path / "other-index"
    env = {**GIT_ENV, "GIT_INDEX_FILE": str(other), "GIT_WORK_TREE": str(two)}
    for args in (["read-tree", "HEAD"], ["update-index", "-q", "--refresh"]):
        subprocess.run(["git", *args], cwd=one, env=env, check=True)
    return one, one / ".git" / "index", two, other


def test_entries_under_the_parts_come_from_the_other_index(two_indexes: tuple[Path, Path, Path, Path]) -> None:
    one, index, two, other = two_indexes
    join_indexes(index, other, ["a", "top.txt"])

    found = inodes(index, one)
    assert sorted(found) == NAMES
    taken = {"a/c", "a/d/e", "top.txt"}
    for name in NAMES:
        tree = two if name in taken else one
        assert found[name] == os.lstat(tree / name).st_ino, name
    assert git("status", "--porcelain", cwd=one) == ""


def test_indexes_of_different_trees_are_refused(two_indexes: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    one, index, _, other = two_indexes
    commit_file(one, "later.txt", "later\n")
    before = index.read_bytes()
    with pytest.raises(WorkspaceError, match="list different paths"):
        join_indexes(index, other, ["a"])
    assert index.read_bytes() == before


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
