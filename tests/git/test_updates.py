"""A spare brought forward by writing only what differs, through folder descriptors: the same tree and
the same index git would have after a fresh checkout, unchanged files untouched, nothing ever written
through a symlink or into a FIFO, and libgit2's checkout wherever something converts what is written."""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

import pytest

from app.git.checkouts import advance, check_out
from app.git.indexes import remember_layout
from app.git.layout import private_gitdir
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
    """A spare of `commit` at `dest`, checked out from a bare mirror of `origin` with all its commits."""
    check_out(mirror_of(origin), commit, dest)
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
