"""Spare work trees brought forward by the difference: the result is the tree a fresh checkout writes
(renames, deletions, modes, symlinks, submodules, files that become folders and back), only what
changed is written, and a hostile new tree is refused without anything landing outside."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

import pygit2
import pytest

from app.core.errors import WorkspaceError
from app.git.checkouts import checkout
from app.git.layout import private_gitdir
from app.git.mirrors import Mirrors
from app.git.spares import claim_spare, keep_spare, spares_dir
from app.sandbox.bwrap import BwrapSandbox, sandbox_available
from tests.git.test_checkouts import BLOB, LINK, TREE, blob, tree
from tests.support.git import git

GITLINK = 0o160000
SUBMODULE_A, SUBMODULE_B = "1" * 40, "2" * 40


def write(repo: Path, name: str, text: str, mode: int = 0o644) -> None:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text)
    (repo / name).chmod(mode)


def link(repo: Path, name: str, target: str) -> None:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).symlink_to(target)


def commit_all(repo: Path, message: str) -> str:
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A repository whose second commit changes every kind of entry its first one has."""
    return make_origin(tmp_path / "origin")


def make_origin(repo: Path, *, submodules: bool = True) -> Path:
    git("init", "-q", "-b", "main", str(repo))
    for i in range(30):
        write(repo, f"same/file{i}.txt", f"unchanged {i}\n")
    write(repo, "docs/old-name.md", "renamed\n")
    write(repo, "gone/a.txt", "the folder goes\n")
    write(repo, "gone/deep/b.txt", "the folder goes\n")
    write(repo, "becomes-exec.sh", "#!/bin/sh\n")
    write(repo, "stops-exec.sh", "#!/bin/sh\n", 0o755)
    write(repo, "edited.txt", "before\n")
    write(repo, "file-then-folder", "a file first\n")
    write(repo, "folder-then-file/inside.txt", "a folder first\n")
    write(repo, "file-then-link", "a file first\n")
    link(repo, "link-then-file", "edited.txt")
    link(repo, "retargeted", "edited.txt")
    link(repo, "dir-link", "same")
    commit_all(repo, "first")
    if submodules:
        git("update-index", "--add", "--cacheinfo", f"{GITLINK:o},{SUBMODULE_A},vendor/changed", cwd=repo)
        git("update-index", "--add", "--cacheinfo", f"{GITLINK:o},{SUBMODULE_A},vendor/removed", cwd=repo)
        git("commit", "-q", "-m", "submodules", cwd=repo)
    return repo


def move(repo: Path, *, submodules: bool = True) -> str:
    """The second commit: each entry of the first changes in a different way."""
    (repo / "docs" / "moved").mkdir()
    git("mv", "docs/old-name.md", "docs/moved/new-name.md", cwd=repo)
    git("rm", "-q", "-r", "gone", cwd=repo)
    (repo / "becomes-exec.sh").chmod(0o755)
    (repo / "stops-exec.sh").chmod(0o644)
    write(repo, "edited.txt", "after\n")
    (repo / "file-then-folder").unlink()
    write(repo, "file-then-folder/now.txt", "a folder now\n")
    git("rm", "-q", "-r", "folder-then-file", cwd=repo)
    write(repo, "folder-then-file", "a file now\n")
    (repo / "file-then-link").unlink()
    link(repo, "file-then-link", "edited.txt")
    (repo / "link-then-file").unlink()
    write(repo, "link-then-file", "a file now\n")
    (repo / "retargeted").unlink()
    link(repo, "retargeted", "docs/moved/new-name.md")
    write(repo, "added/new.txt", "new\n")
    git("add", "-A", cwd=repo)
    if submodules:
        git("update-index", "--add", "--cacheinfo", f"{GITLINK:o},{SUBMODULE_B},vendor/changed", cwd=repo)
        git("update-index", "--force-remove", "vendor/removed", cwd=repo)
        git("update-index", "--add", "--cacheinfo", f"{GITLINK:o},{SUBMODULE_B},vendor/added", cwd=repo)
    git("commit", "-q", "-m", "second", cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


def listing(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under `root` but `.git`: its kind, its executable bits and its content or target."""
    found: dict[str, tuple[str, int, str]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[key] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[key] = ("dir", 0, "")
            else:
                found[key] = ("file", info.st_mode & 0o111, path.read_text())
    return found


async def test_a_spare_brought_forward_is_the_tree_a_fresh_checkout_writes(
    origin: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "app.git")
    mirrors = Mirrors(tmp_path / "cache")
    mirror = await mirrors.ensure(str(origin))
    await mirrors.checkout(mirror, "main", tmp_path / "runs" / "1")
    await mirrors.settle()
    (spare,) = spares_dir(mirror).glob("*/work")
    unchanged = (spare / "same" / "file0.txt").stat().st_ino

    new_head = move(origin)
    await mirrors.ensure(str(origin))
    advanced = await mirrors.checkout(mirror, "main", tmp_path / "runs" / "2")
    await mirrors.settle()
    fresh = await checkout(mirror, "main", tmp_path / "fresh")

    assert advanced.base_commit == fresh.base_commit == new_head
    assert listing(advanced.path) == listing(fresh.path)
    assert (advanced.path / "same" / "file0.txt").stat().st_ino == unchanged, "only what changed is written"
    assert git("status", "--porcelain", cwd=advanced.path) == ""
    assert git("write-tree", cwd=advanced.path) == git("rev-parse", "HEAD^{tree}", cwd=origin)
    assert git("symbolic-ref", "HEAD", cwd=advanced.path) == "refs/heads/main"
    assert advanced.changed_files() == []
    assert "could not bring" not in caplog.text


async def test_a_claimed_spare_goes_back_and_forth_between_branches(
    origin: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spare made for one branch serves a run of another, by the difference, in either direction."""
    caplog.set_level(logging.INFO, "app.git")
    git("branch", "old", cwd=origin)
    move(origin)
    mirrors = Mirrors(tmp_path / "cache")
    mirror = await mirrors.ensure(str(origin))
    for n, base in enumerate(["old", "main", "old", "main"]):
        await mirrors.checkout(mirror, base, tmp_path / "runs" / str(n))
        await mirrors.settle()
    for n, base in enumerate(["old", "main", "old", "main"]):
        fresh = await checkout(mirror, base, tmp_path / "fresh" / str(n))
        assert listing(tmp_path / "runs" / str(n)) == listing(fresh.path), base
        assert git("write-tree", cwd=tmp_path / "runs" / str(n)) == git("rev-parse", f"{base}^{{tree}}", cwd=origin)
    assert "could not bring" not in caplog.text


def bare_mirror(tmp_path: Path, root: pygit2.Oid | None = None) -> tuple[Path, pygit2.Repository]:
    path = tmp_path / "mirror.git"
    repo = pygit2.Repository(str(path)) if path.exists() else pygit2.init_repository(str(path), bare=True)
    if root is not None:
        who = pygit2.Signature("Fork", "fork@example.com")
        parents = [repo.references["refs/heads/main"].target] if "refs/heads/main" in repo.references else []
        repo.create_commit("refs/heads/main", who, who, "next", root, parents)
    return path, repo


async def test_a_hostile_next_tree_is_refused_and_nothing_lands_outside(tmp_path: Path) -> None:
    """The spare holds the symlink `out` -> ../outside; the next tree keeps that very entry and adds a
    folder of the same name. Writing only the new paths would go through the symlink: refused."""
    (tmp_path / "outside").mkdir()
    path, repo = bare_mirror(tmp_path)
    target = blob(repo, b"../../../outside")
    bare_mirror(tmp_path, tree(repo, (LINK, b"out", target)))
    keep_spare(path, "main")
    bare_mirror(
        tmp_path,
        tree(repo, (LINK, b"out", target), (TREE, b"out", tree(repo, (BLOB, b"escaped.txt", blob(repo))))),
    )

    dest = tmp_path / "runs" / "r1" / "work"
    assert claim_spare(path, "main", dest) is None
    assert not dest.exists() and not private_gitdir(dest).exists()
    with pytest.raises(WorkspaceError, match="could not check out main"):
        await checkout(path, "main", dest)
    assert list((tmp_path / "outside").iterdir()) == []


async def test_a_symlink_that_becomes_a_folder_is_replaced_not_followed(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    path, repo = bare_mirror(tmp_path)
    bare_mirror(tmp_path, tree(repo, (LINK, b"out", blob(repo, b"../../../outside"))))
    keep_spare(path, "main")
    bare_mirror(tmp_path, tree(repo, (TREE, b"out", tree(repo, (BLOB, b"inside.txt", blob(repo))))))

    workspace = claim_spare(path, "main", tmp_path / "runs" / "r1" / "work")
    assert workspace is not None, "a legitimate type change is brought forward"
    assert list((tmp_path / "outside").iterdir()) == []
    assert not (workspace.path / "out").is_symlink() and (workspace.path / "out" / "inside.txt").is_file()


async def test_a_spare_is_claimed_once(origin: Path, tmp_path: Path) -> None:
    mirror = await Mirrors(tmp_path / "cache").ensure(str(origin))
    keep_spare(mirror, "main")
    first = claim_spare(mirror, "main", tmp_path / "runs" / "1")
    second = claim_spare(mirror, "main", tmp_path / "runs" / "2")
    assert first is not None and second is None
    assert [p.name for p in spares_dir(mirror).iterdir() if not p.name.startswith(".")] == []
    with pytest.raises(WorkspaceError, match="does not exist"):
        claim_spare(mirror, "no-such-branch", tmp_path / "runs" / "3")


async def test_a_run_from_a_brought_forward_spare_sees_only_its_own_tree_in_bwrap(origin: Path, tmp_path: Path) -> None:
    reason = sandbox_available()
    if reason is not None:
        pytest.fail(reason)
    mirrors = Mirrors(tmp_path / "data")
    mirror = await mirrors.ensure(str(origin))
    first = await mirrors.checkout(mirror, "main", tmp_path / "data" / "runs" / "1" / "repo")
    await mirrors.settle()
    move(origin)
    await mirrors.ensure(str(origin))
    second = await mirrors.checkout(mirror, "main", tmp_path / "data" / "runs" / "2" / "repo")
    await mirrors.settle()
    (first.path / "run-1-only.txt").write_text("another run's file\n")
    assert list(spares_dir(mirror).glob("*/work")), "a new spare waits beside the mirror"

    shell = await BwrapSandbox().shell(second.path, {})
    try:
        seen = await shell.run(f"ls {first.path} {spares_dir(mirror)}; git status --porcelain; cat docs/moved/*", 20)
    finally:
        await shell.close()
    assert seen.output.count("No such file or directory") == 2, seen.output
    assert "run-1-only" not in seen.output
    assert seen.output.endswith("renamed\n"), "the agent's git sees a clean tree at the new base"


def ready(mirror: Path) -> list[str]:
    """The commit each ready spare of `mirror` was made for."""
    return sorted(p.name.split("-")[0] for p in spares_dir(mirror).iterdir() if not p.name.startswith("."))


async def test_several_spares_are_kept_advanced_together_and_each_claimed_once(origin: Path, tmp_path: Path) -> None:
    mirrors = Mirrors(tmp_path / "cache", spares=3)
    mirror = await mirrors.ensure(str(origin))
    first = git("rev-parse", "main", cwd=origin)
    await mirrors.checkout(mirror, "main", tmp_path / "runs" / "0")
    await mirrors.settle()
    assert ready(mirror) == [first] * 3

    second = move(origin)
    await mirrors.ensure(str(origin))  # the fetch brings every spare to the new commit of its branch
    await mirrors.settle()
    assert ready(mirror) == [second] * 3
    claimed = [claim_spare(mirror, "main", tmp_path / "runs" / str(n)) for n in (1, 2, 3, 4)]
    assert [c is not None for c in claimed] == [True, True, True, False]
    fresh = await checkout(mirror, "main", tmp_path / "fresh")
    for workspace in claimed[:3]:
        assert workspace is not None and listing(workspace.path) == listing(fresh.path)

    keep_spare(mirror, "main", count=2)
    assert ready(mirror) == [second] * 2
    keep_spare(mirror, "main", count=1)  # fewer wanted: the others go
    assert ready(mirror) == [second]
    assert [p.name for p in spares_dir(mirror).iterdir() if p.name.startswith(".") and p.name != ".lock"] == []


async def test_no_spares_when_none_are_wanted(origin: Path, tmp_path: Path) -> None:
    mirrors = Mirrors(tmp_path / "cache", spares=0)
    mirror = await mirrors.ensure(str(origin))
    await mirrors.checkout(mirror, "main", tmp_path / "runs" / "0")
    await mirrors.settle()
    assert not spares_dir(mirror).exists()


async def test_spares_are_made_one_at_a_time_after_the_work_that_goes_first(
    origin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str | None, int | None]] = []

    def noted(mirror: Path, base: str | None = None, count: int = 1, *, at_most: int | None = None) -> int:
        calls.append((base, at_most))
        return keep_spare(mirror, base, count, at_most=at_most)

    monkeypatch.setattr("app.git.mirrors.keep_spare", noted)
    gates = 0
    gate = asyncio.Event()

    async def before() -> None:
        nonlocal gates
        gates += 1
        await gate.wait()

    mirrors = Mirrors(tmp_path / "cache", spares=3, before_background=before)
    mirror = await mirrors.ensure(str(origin))
    await mirrors.checkout(mirror, "main", tmp_path / "runs" / "0")
    await mirrors.checkout(mirror, "main", tmp_path / "runs" / "1")  # a second keeper only hands over its base
    await asyncio.sleep(0.2)  # time enough for a keeper that did not wait to have started
    assert calls == [] and gates == 1
    gate.set()
    await mirrors.settle()
    assert calls == [("main", 1)] * 3 and gates == 3, "one spare per pass, each pass after the gate"
    assert len(ready(mirror)) == 3
