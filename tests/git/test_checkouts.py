"""Checkouts of hostile trees: a commit from a fork may hold any tree git can store. Paths into `.git`,
`..`, the names Windows and macOS file systems fold onto `.git`, and writes through a symlink the
same tree made are refused, and nothing is written outside the checkout."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest

from app.core.errors import WorkspaceError
from app.git.checkouts import checkout
from app.git.layout import private_gitdir
from tests.support.git import git

BLOB, TREE, LINK = 0o100644, 0o040000, 0o120000


def tree(repo: pygit2.Repository, *entries: tuple[int, bytes, pygit2.Oid]) -> pygit2.Oid:
    """A tree object written byte by byte, in the given order, so no library can tidy it up."""
    body = b"".join(b"%o %s\0" % (mode, name) + oid.raw for mode, name, oid in entries)
    return repo.odb.write(pygit2.enums.ObjectType.TREE, body)


def mirror_with(tmp_path: Path, build: object) -> Path:
    """A bare mirror whose `main` is one commit of the tree `build(repo)` returns."""
    path = tmp_path / "mirror.git"
    repo = pygit2.init_repository(str(path), bare=True)
    root = build(repo)  # type: ignore[operator]
    who = pygit2.Signature("Fork", "fork@example.com")
    repo.create_commit("refs/heads/main", who, who, "hostile", root, [])
    return path


def blob(repo: pygit2.Repository, text: bytes = b"pwned\n") -> pygit2.Oid:
    return repo.create_blob(text)


def inside(repo: pygit2.Repository, name: bytes) -> pygit2.Oid:
    """A tree holding `name/hooks/post-checkout`."""
    hooks = tree(repo, (BLOB, b"post-checkout", blob(repo, b"#!/bin/sh\ntouch /tmp/pwned\n")))
    return tree(repo, (TREE, name, tree(repo, (TREE, b"hooks", hooks))))


HOSTILE = {
    ".git": lambda repo: inside(repo, b".git"),
    ".GIT": lambda repo: inside(repo, b".GIT"),
    "git~1 (NTFS short name)": lambda repo: inside(repo, b"git~1"),
    ".git. (NTFS trailing dot)": lambda repo: inside(repo, b".git."),
    ".g\u200cit (HFS ignorable)": lambda repo: inside(repo, ".g\u200cit".encode()),
    "..": lambda repo: tree(repo, (TREE, b"..", tree(repo, (BLOB, b"escaped.txt", blob(repo))))),
    "a symlink, then a name with a slash through it": lambda repo: tree(
        repo, (LINK, b"out", blob(repo, b"../outside")), (BLOB, b"out/escaped.txt", blob(repo))
    ),
    "symlink then a file through it": lambda repo: tree(
        repo,
        (LINK, b"out", blob(repo, b"../outside")),
        (TREE, b"out", tree(repo, (BLOB, b"escaped.txt", blob(repo)))),
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_a_hostile_tree_is_refused_and_nothing_lands_outside(tmp_path: Path, case: str) -> None:
    mirror = mirror_with(tmp_path, HOSTILE[case])
    (tmp_path / "outside").mkdir()
    dest = tmp_path / "runs" / "r1" / "work"
    with pytest.raises(WorkspaceError, match="could not check out main"):
        await checkout(mirror, "main", dest)
    assert list((tmp_path / "outside").iterdir()) == []
    assert not dest.exists() and not private_gitdir(dest).exists(), "a refused checkout leaves nothing"


async def test_a_plain_tree_with_a_symlink_and_an_executable_checks_out(tmp_path: Path) -> None:
    def build(repo: pygit2.Repository) -> pygit2.Oid:
        src = tree(repo, (BLOB, b"app.py", blob(repo, b"print(1)\n")))
        return tree(
            repo,
            (LINK, b"link", blob(repo, b"src/app.py")),
            (0o100755, b"run.sh", blob(repo, b"#!/bin/sh\n")),
            (TREE, b"src", src),
        )

    workspace = await checkout(mirror_with(tmp_path, build), "main", tmp_path / "work")
    assert (workspace.path / "src" / "app.py").read_text() == "print(1)\n"
    assert (workspace.path / "link").readlink() == Path("src/app.py")
    assert (workspace.path / "run.sh").stat().st_mode & 0o111
    assert workspace.changed_files() == []


def big_tree(repo: pygit2.Repository, files: int) -> pygit2.Oid:
    """`files` files in nested folders (one executable, one symlink in each), under a single `src`."""
    folders = []
    for f in range(files // 50):
        names = [(BLOB, b"f%04d.txt" % n, blob(repo, b"folder %d file %d\n" % (f, n))) for n in range(48)]
        names += [(LINK, b"link", blob(repo, b"f0000.txt")), (0o100755, b"run.sh", blob(repo, b"#!/bin/sh\n"))]
        folders.append((TREE, b"d%03d" % f, tree(repo, *sorted(names, key=lambda e: e[1]))))
    return tree(repo, (BLOB, b"README", blob(repo, b"big\n")), (TREE, b"src", tree(repo, *folders)))


async def test_a_big_tree_is_written_by_two_writers_with_one_index_of_every_file(tmp_path: Path) -> None:
    workspace = await checkout(mirror_with(tmp_path, lambda repo: big_tree(repo, 5000)), "main", tmp_path / "work")

    assert not (private_gitdir(workspace.path) / "routines-writer").exists()
    assert (workspace.path / "src" / "d099" / "f0047.txt").read_text() == "folder 99 file 47\n"
    assert (workspace.path / "src" / "d000" / "link").readlink() == Path("f0000.txt")
    assert git("status", "--porcelain", cwd=workspace.path) == ""
    assert git("write-tree", cwd=workspace.path) == git("rev-parse", "HEAD^{tree}", cwd=workspace.path)
    debug = git("ls-files", "--debug", cwd=workspace.path).splitlines()
    inodes = {name: int(line.split("ino:")[1]) for name, line in zip(debug[::6], debug[3::6], strict=True)}
    assert len(inodes) == 5001
    assert all((workspace.path / name).lstat().st_ino == ino for name, ino in inodes.items()), "stat data of each file"
