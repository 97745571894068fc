"""Checkpoints of a workspace: a commit in the run's checkpoint store (same machine) or a patch (another
machine); the mirror, which every sandbox of the repository sees, never holds them."""

from __future__ import annotations

import resource
from pathlib import Path

import pygit2
import pytest

from app.core.errors import WorkspaceError
from app.git.layout import private_gitdir
from app.git.mirrors import Mirrors
from app.git.workspace import MAX_DIFF_INPUT_BYTES, Workspace
from tests.support.git import commit_file, git, snap

REF = "refs/routines/checkpoints/run1"


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    repo = tmp_path / "origin"
    git("init", "-q", "-b", "main", str(repo))
    commit_file(repo, "keep.txt", "keep\n")
    commit_file(repo, "gone.txt", "soon gone\n")
    commit_file(repo, "edit.txt", "old\n")
    return repo


def change(work: Path) -> None:
    (work / "gone.txt").unlink()
    (work / "edit.txt").write_text("new\n")
    (work / "sub").mkdir()
    (work / "sub" / "added.txt").write_text("added\n")


def state(work: Path) -> dict[str, str]:
    files = sorted(p for p in work.rglob("*") if p.is_file() and ".git" not in p.relative_to(work).parts)
    return {str(p.relative_to(work)): p.read_text() for p in files}


@pytest.mark.parametrize("source", ["commit", "patch"])
async def test_a_checkpoint_restores_into_a_fresh_workspace(tmp_path: Path, origin: Path, source: str) -> None:
    mirrors = Mirrors(tmp_path / "data", spares=False)
    mirror = await mirrors.ensure(str(origin))
    dest = tmp_path / "run" / "repo"
    first = await mirrors.checkout(mirror, "main", dest)
    await snap(first)
    assert await first.checkpoint(REF) is None, "nothing changed yet"
    change(first.path)
    await snap(first)
    sha = await first.checkpoint(REF)
    assert sha is not None and await first.checkpoint(REF) is None
    patch, expected, changed = first.diff(), state(first.path), first.changed_files()
    assert REF not in pygit2.Repository(str(mirror)).references
    assert pygit2.Oid(hex=sha) not in pygit2.Repository(str(mirror)).odb
    mirrors.discard(dest)  # as after a crash: the checkout goes, the run's checkpoints stay

    second = await mirrors.checkout(mirror, "main", dest)
    how = await second.restore(sha if source == "commit" else "0" * 40, patch)

    assert how == source
    assert state(second.path) == expected and second.changed_files() == changed == [
        "edit.txt",
        "gone.txt",
        "sub/added.txt",
    ]
    reopened = Workspace.open(second.path)
    await snap(reopened)
    assert reopened.diff() == patch
    second.cleanup()
    assert not any(path.name.startswith("repo") for path in dest.parent.iterdir())


async def test_no_patch_is_built_from_changed_files_over_the_limits(tmp_path: Path, origin: Path) -> None:
    """100 MiB of newlines once took libgit2 9 GB to diff: files past the bytes (read from object headers)
    or the lines a patch is built from are refused before libgit2 starts; the checkpoint's commit holds them."""
    mirrors = Mirrors(tmp_path / "data", spares=False)
    ws = await mirrors.checkout(await mirrors.ensure(str(origin)), "main", tmp_path / "run" / "repo")
    (ws.path / "newlines").write_bytes(b"\n" * (8 * 1024 * 1024))
    await snap(ws)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WorkspaceError, match="no patch is built from over 1,000,000"):
        ws.diff()
    # libgit2 took ~750 MiB for these 8M lines; counting them takes one blob's memory
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kib < 200 * 1024
    sha = await ws.checkpoint(REF)
    assert sha is not None and ws.changed_files() == ["newlines"]
    tree = pygit2.Repository(str(private_gitdir(ws.path)))[sha].peel(pygit2.Tree)
    assert tree["newlines"].peel(pygit2.Blob).size == 8 * 1024 * 1024

    (ws.path / "newlines").write_bytes(b"x" * (MAX_DIFF_INPUT_BYTES + 1))  # one line, but too many bytes
    await snap(ws)
    with pytest.raises(WorkspaceError, match="over 64 MiB"):
        ws.diff()

    (ws.path / "newlines").unlink()
    (ws.path / "edit.txt").write_text("new\n")
    await snap(ws)
    assert "-old\n+new\n" in ws.diff()
