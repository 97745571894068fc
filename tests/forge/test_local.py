"""The local forge against real repositories, and a run's round trip through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.errors import ForgeError
from app.forge.local import LocalForge
from app.git.mirrors import Mirrors
from tests.support.git import git, snap


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A repository whose HEAD is on `trunk`, with one commit."""
    repo = tmp_path / "projects" / "api"
    git("init", "-q", "-b", "trunk", str(repo))
    (repo / "app.py").write_text("print('v1')\n")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "v1", cwd=repo)
    return repo


async def test_resolve_absolute_and_relative_paths(project: Path, tmp_path: Path) -> None:
    forge = LocalForge(root=tmp_path)
    for given in (str(project), "projects/api", "projects/../projects/api"):
        info = await forge.resolve(given)
        assert info.full_name == str(project)
        assert info.clone_url == str(project)
        assert info.default_branch == "trunk"
    assert await forge.credentials(info, {"contents": "write"}) is None
    assert await forge.find_pull_request(info, "routines/x/1", None) is None


async def test_resolve_refuses_what_is_not_a_usable_repository(project: Path, tmp_path: Path) -> None:
    forge = LocalForge(root=tmp_path)
    with pytest.raises(ForgeError, match=r"repo: 'nowhere' is not a git repository .*create one with `git init`"):
        await forge.resolve("nowhere")
    with pytest.raises(ForgeError, match="is not a git repository"):
        await forge.resolve(str(project / "app.py"))
    with pytest.raises(ForgeError, match="is not a git repository"):
        await forge.resolve(str(project.parent))
    git("init", "-q", "-b", "main", str(tmp_path / "empty"))
    with pytest.raises(ForgeError, match="has no commits yet; commit something on main first"):
        await forge.resolve("empty")
    git("checkout", "-q", "--detach", cwd=project)
    with pytest.raises(ForgeError, match="detached HEAD"):
        await forge.resolve(str(project))


async def test_open_pull_request_explains_that_the_branch_is_the_result(project: Path) -> None:
    forge = LocalForge()
    info = await forge.resolve(str(project))
    with pytest.raises(ForgeError) as refused:
        await forge.open_pull_request(
            info, head="routines/fix/1", base="trunk", title="t", body="b", draft=True, creds=None
        )
    assert f"the work is on branch routines/fix/1 of {project}" in str(refused.value)
    assert "git log trunk..routines/fix/1" in str(refused.value)


async def test_a_run_round_trip_leaves_its_branch_in_the_repository(project: Path, tmp_path: Path) -> None:
    forge = LocalForge(root=tmp_path)
    info = await forge.resolve("projects/api")
    mirrors = Mirrors(tmp_path / "cache")
    ws = await mirrors.checkout(await mirrors.ensure(info.clone_url), info.default_branch, tmp_path / "run" / "work")
    (ws.path / "app.py").write_text("print('v2')\n")
    await snap(ws)
    sha = await ws.commit("Bump to v2", "Routines", "bot@example.com")
    await ws.push(info.clone_url, "routines/bump/0001", await forge.credentials(info, {}))
    await mirrors.settle()

    assert git("rev-parse", "routines/bump/0001", cwd=project) == sha
    assert git("show", "routines/bump/0001:app.py", cwd=project) == "print('v2')"
    assert (project / "app.py").read_text() == "print('v1')\n"
    assert git("symbolic-ref", "--short", "HEAD", cwd=project) == "trunk"
