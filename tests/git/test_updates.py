"""A spare brought forward by writing only what differs, through folder descriptors: the same tree and
the same index git would have after a fresh checkout, unchanged files untouched, nothing ever written
through a symlink or into a FIFO, and libgit2's checkout wherever something converts what is written."""

from __future__ import annotations

import logging
import os
import re
import resource
import stat
from pathlib import Path

import pygit2
import pytest

from app.core.errors import WorkspaceError
from app.git.checkouts import MAX_WRITER_DEPTH, advance, check_out
from app.git.indexes import remember_layout
from app.git.layout import private_gitdir
from tests.git.test_checkouts import BLOB, TREE, blob, tree
from tests.git.test_spares import commit_all, listing, make_origin, move, write
from tests.support.git import git

BY_DESCRIPTORS = "written by folder descriptors"
BY_LIBGIT2 = "written by libgit2"
DEBUG_ENTRY = re.compile(r"^(\S.*)\n  ctime: \S+\n  mtime: (\d+):\d+\n  dev: \d+\tino: (\d+)\n.*\n  size: (\d+)", re.M)


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    """The spare tests' repository without submodules: every change the writer handles itself."""
    return make_origin(tmp_path / "origin", submodules=False)


def spare_at(origin: Path, commit: str, dest: Path) -> Path:
    """A spare of `commit` at `dest`, checked out from `origin` when bare, else from a bare mirror of it."""
    check_out(origin if origin.suffix == ".git" else mirror_of(origin), commit, dest)
    remember_layout(private_gitdir(dest) / "index")
    return dest


def mirror_of(origin: Path) -> Path:
    mirror = origin.with_name("mirror.git")
    if not mirror.exists():
        git("clone", "-q", "--bare", str(origin), str(mirror))
    git("--git-dir", str(mirror), "fetch", "-q", str(origin), "+refs/heads/*:refs/heads/*")
    return mirror


def private(work: Path, *args: str) -> str:
    """git on the work tree `work` with its private git directory."""
    return git("--git-dir", str(private_gitdir(work)), "--work-tree", str(work), *args, cwd=work)


def debug_stat(work: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime seconds) of each entry, as git's index records them (`git ls-files --debug`)."""
    found = {}
    text = private(work, "ls-files", "--debug")
    for match in DEBUG_ENTRY.finditer(text):
        found[match[1]] = (int(match[3]), int(match[4]), int(match[2]))
    return found


def test_the_brought_forward_tree_and_index_are_a_fresh_checkouts(
    plain: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "app.git")
    first = git("rev-parse", "HEAD", cwd=plain)
    spare = spare_at(plain, first, tmp_path / "spare")
    untouched = (spare / "same" / "file0.txt").stat().st_ino
    edited = (spare / "edited.txt").stat().st_ino
    second = move(plain, submodules=False)
    mirror_of(plain)

    assert advance(spare, first, second)
    assert BY_DESCRIPTORS in caplog.text and BY_LIBGIT2 not in caplog.text
    (private_gitdir(spare) / "HEAD").write_text(f"{second}\n")
    fresh = check_out(mirror_of(plain), second, tmp_path / "fresh").path

    assert listing(spare) == listing(fresh)
    assert (spare / "same" / "file0.txt").stat().st_ino == untouched, "what did not change is not written"
    assert (spare / "edited.txt").stat().st_ino == edited, "an edited file is rewritten in place"
    assert (spare / "becomes-exec.sh").stat().st_mode & 0o777 == (fresh / "becomes-exec.sh").stat().st_mode & 0o777
    # the work trees' own .git are the agent's (a copy of the index at attach): read the private ones
    assert private(spare, "ls-files", "-s") == private(fresh, "ls-files", "-s")
    assert private(spare, "diff-files", "--name-only") == "", "the index's stat data matches the disk"
    recorded = debug_stat(spare)
    for path in ("edited.txt", "added/new.txt", "link-then-file", "file-then-link", "docs/moved/new-name.md"):
        info = (spare / path).lstat()
        assert recorded[path] == (info.st_ino, info.st_size, int(info.st_mtime)), path


def test_it_refuses_a_disk_that_is_not_the_old_tree_without_following_links(plain: Path, tmp_path: Path) -> None:
    """A spare is never touched, but were a folder on the way a symlink, or a file a FIFO, nothing is
    written through it and nothing blocks: the spare is dropped and a run checks out afresh."""
    first = git("rev-parse", "HEAD", cwd=plain)
    second = move(plain, submodules=False)
    mirror_of(plain)
    outside = tmp_path / "outside"
    outside.mkdir()

    linked = spare_at(plain, first, tmp_path / "linked")
    for entry in (linked / "docs").iterdir():
        entry.unlink()
    (linked / "docs").rmdir()
    (linked / "docs").symlink_to(outside)
    assert not advance(linked, first, second)
    assert list(outside.iterdir()) == []

    piped = spare_at(plain, first, tmp_path / "piped")
    (piped / "edited.txt").unlink()
    os.mkfifo(piped / "edited.txt")
    assert not advance(piped, first, second), "opening the FIFO fails at once instead of waiting for a reader"
    assert stat.S_ISFIFO((piped / "edited.txt").lstat().st_mode)


def test_line_endings_from_gitattributes_are_left_to_libgit2(
    plain: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "app.git")
    write(plain, ".gitattributes", "*.txt text eol=crlf\n")
    first = commit_all(plain, "attributes")
    spare = spare_at(plain, first, tmp_path / "spare")
    second = move(plain, submodules=False)
    mirror_of(plain)

    assert advance(spare, first, second)
    assert BY_LIBGIT2 in caplog.text and BY_DESCRIPTORS not in caplog.text
    fresh = check_out(mirror_of(plain), second, tmp_path / "fresh").path
    assert (spare / "added" / "new.txt").read_bytes() == b"new\r\n" == (fresh / "added" / "new.txt").read_bytes()
    assert listing(spare) == listing(fresh)


def raw_commit(path: Path, root: pygit2.Oid) -> str:
    """`root` committed on `main` of the bare repository at `path` (made if missing), on top of main."""
    repo = pygit2.Repository(str(path)) if path.exists() else pygit2.init_repository(str(path), bare=True)
    who = pygit2.Signature("Fork", "fork@example.com")
    parents = [repo.references["refs/heads/main"].target] if "refs/heads/main" in repo.references else []
    return str(repo.create_commit("refs/heads/main", who, who, "next", root, parents))


def nested(repo: pygit2.Repository, depth: int, leaf: pygit2.Oid) -> pygit2.Oid:
    for _ in range(depth):
        leaf = tree(repo, (TREE, b"d", leaf))
    return leaf


def test_deep_paths_and_names_libgit2_judges_are_left_to_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A path deeper than the writer goes, or a name with `\\` or `~`, is written (or refused) by libgit2
    exactly as a fresh checkout: `.git\\hooks` is refused on the way, never written by the writer."""
    caplog.set_level(logging.DEBUG, "app.git")
    path = tmp_path / "mirror.git"
    repo = pygit2.init_repository(str(path), bare=True)
    first = raw_commit(path, tree(repo, (BLOB, b"a.txt", blob(repo, b"one\n"))))
    deep = nested(repo, MAX_WRITER_DEPTH + 1, tree(repo, (BLOB, b"f.txt", blob(repo, b"deep\n"))))
    second = raw_commit(path, tree(repo, (BLOB, b"a.txt", blob(repo, b"two\n")), (TREE, b"d", deep)))

    spare = spare_at(path, first, tmp_path / "spare")
    assert advance(spare, first, second)
    assert BY_LIBGIT2 in caplog.text and BY_DESCRIPTORS not in caplog.text
    assert listing(spare) == listing(check_out(path, second, tmp_path / "fresh").path)

    hooks = tree(repo, (BLOB, b"post-checkout", blob(repo, b"#!/bin/sh\ntouch /tmp/pwned\n")))
    third = raw_commit(path, tree(repo, (TREE, b".git\\hooks", hooks), (BLOB, b"a.txt", blob(repo, b"two\n"))))
    again = spare_at(path, second, tmp_path / "again")
    assert not advance(again, second, third), "refused as core.protectNTFS refuses it in a fresh checkout"
    with pytest.raises(WorkspaceError):
        check_out(path, third, tmp_path / "refused")


def test_an_empty_folder_is_not_written_and_many_folders_hold_few_descriptors(tmp_path: Path) -> None:
    """libgit2 writes no folder for an empty tree, so neither does the writer; and a change that adds
    folders by the hundred keeps only the folders on the way to the current entry open."""
    path = tmp_path / "mirror.git"
    repo = pygit2.init_repository(str(path), bare=True)
    first = raw_commit(path, tree(repo, (BLOB, b"a.txt", blob(repo, b"one\n"))))
    wide = tree(repo, *((TREE, b"f%04d" % n, tree(repo, (BLOB, b"x", blob(repo, b"%d\n" % n)))) for n in range(400)))
    empty = tree(repo)
    two = blob(repo, b"two\n")
    second = raw_commit(path, tree(repo, (BLOB, b"a.txt", two), (TREE, b"empty", empty), (TREE, b"w", wide)))
    spare = spare_at(path, first, tmp_path / "spare")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 64, hard))
    try:
        assert advance(spare, first, second)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not (spare / "empty").exists()
    assert listing(spare) == listing(check_out(path, second, tmp_path / "fresh").path)
