"""Mirrors over smart HTTP: concurrent runs share one fetch, a run racing a fetch gets a whole tree of
one commit, and a first run clones shallow while the history follows in the background."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.core.errors import WorkspaceError
from app.git.checkouts import checkout
from app.git.layout import fetch_log
from app.git.mirrors import Mirrors
from app.testing.git_http import run_http_backend
from app.testing.serve import serve_in_thread
from tests.support.git import commit_file, git


class CountingServer:
    """Smart HTTP over `root`, counting the fetches that reach it (one ref advertisement each)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fetches = 0

    async def endpoint(self, request: Request) -> Response:
        if request.url.path.endswith("/info/refs"):
            self.fetches += 1
        return await run_http_backend(request, self.root, "/" + request.path_params["path"])


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """A repository with history on `main`, a second branch and a tag."""
    repo = tmp_path / "upstream"
    git("init", "-q", "-b", "main", str(repo))
    for n in range(3):
        commit_file(repo, f"src/file{n}.txt", f"version {n}\n")
    git("tag", "v1", cwd=repo)
    git("branch", "feature", "HEAD~1", cwd=repo)
    return repo


@pytest.fixture
def served(tmp_path: Path, upstream: Path) -> Iterator[tuple[CountingServer, str, Path]]:
    """(server, URL, the served bare repository), pushed to from `upstream`."""
    bare = tmp_path / "served" / "acme" / "api.git"
    git("clone", "-q", "--bare", str(upstream), str(bare))
    git("remote", "add", "served", str(bare), cwd=upstream)
    server = CountingServer(tmp_path / "served")
    app = Starlette(routes=[Route("/{path:path}", server.endpoint, methods=["GET", "POST"])])
    with serve_in_thread(app) as running:
        yield server, f"{running.url}/acme/api.git", bare


async def test_concurrent_runs_share_one_fetch(
    served: tuple[CountingServer, str, Path], upstream: Path, tmp_path: Path
) -> None:
    server, url, _ = served
    mirrors = Mirrors(tmp_path / "cache", spares=False)
    await mirrors.ensure(url)
    await mirrors.settle()
    new_head = commit_file(upstream, "later.txt", "pushed before the runs asked\n")
    git("push", "-q", "served", "main", cwd=upstream)

    before = server.fetches
    paths = await asyncio.gather(*(mirrors.ensure(url) for _ in range(8)))
    workspaces = [await checkout(path, "main", tmp_path / "runs" / str(n)) for n, path in enumerate(paths)]

    assert 1 <= server.fetches - before <= 2, "one fetch serves the runs that waited for it"
    assert {ws.base_commit for ws in workspaces} == {new_head}, "each run sees what was pushed before it asked"


async def test_a_fetch_begun_after_runs_were_fired_serves_them_in_any_process_and_a_later_run_fetches_again(
    served: tuple[CountingServer, str, Path], upstream: Path, tmp_path: Path
) -> None:
    """A burst's runs ask one after another (queued, then resolved); the first fetch that began after they were
    fired serves every one of them, in this worker or another on the machine, and none of them waits for
    one more. A run fired after that fetch began gets a fetch of its own."""
    server, url, _ = served
    mirrors = Mirrors(tmp_path / "cache", spares=False)
    await mirrors.ensure(url)
    head = commit_file(upstream, "burst.txt", "pushed before the burst was fired\n")
    git("push", "-q", "served", "main", cwd=upstream)
    fired = time.time()
    before = server.fetches
    runs = [mirrors, mirrors, Mirrors(tmp_path / "cache", spares=False)]
    for n, run in enumerate(runs):
        mirror = await run.ensure(url, since=fired)
        assert (await checkout(mirror, "main", tmp_path / "runs" / str(n))).base_commit == head
    assert server.fetches - before == 1, "one fetch, begun after the fire, served the three runs"

    later = commit_file(upstream, "later.txt", "pushed after that fetch\n")
    git("push", "-q", "served", "main", cwd=upstream)
    mirror = await runs[2].ensure(url, since=time.time())
    assert server.fetches - before == 2
    assert (await checkout(mirror, "main", tmp_path / "runs" / "later")).base_commit == later


async def test_a_fetch_log_without_times_serves_no_run_by_its_fire_time(
    served: tuple[CountingServer, str, Path], tmp_path: Path
) -> None:
    """A mirror's fetch log written before fetches kept when they began: a run fired at any time fetches."""
    server, url, _ = served
    mirrors = Mirrors(tmp_path / "cache", spares=False)
    mirror = await mirrors.ensure(url)
    fetch_log(mirror).write_text("1 1\n")
    before = server.fetches
    await Mirrors(tmp_path / "cache", spares=False).ensure(url, since=0.0)
    assert server.fetches - before == 1


async def test_a_fetch_asked_for_after_a_push_is_never_skipped(
    served: tuple[CountingServer, str, Path], upstream: Path, tmp_path: Path
) -> None:
    """Fetches in turn, each after a push, from another process's Mirrors or the same one: every one
    reaches the server, none is skipped."""
    server, url, _ = served
    mirrors = Mirrors(tmp_path / "cache", spares=False)
    await mirrors.ensure(url)
    for n, same in enumerate([True, False, True, True]):
        head = commit_file(upstream, "turn.txt", f"turn {n}\n")
        git("push", "-q", "served", "main", cwd=upstream)
        before = server.fetches
        mirror = await (mirrors if same else Mirrors(tmp_path / "cache", spares=False)).ensure(url)
        assert server.fetches > before
        assert (await checkout(mirror, "main", tmp_path / "runs" / str(n))).base_commit == head


async def test_runs_racing_fetches_get_whole_trees_of_one_commit(
    served: tuple[CountingServer, str, Path], upstream: Path, tmp_path: Path
) -> None:
    """Two workers on one data directory: one fetches while the base moves, the other prepares runs from
    the same mirror and its spare meanwhile. Each run's files are exactly its base commit's tree."""
    _, url, _ = served
    fetcher, preparer = Mirrors(tmp_path / "cache"), Mirrors(tmp_path / "cache")
    mirror = await preparer.ensure(url)
    await preparer.checkout(mirror, "main", tmp_path / "runs" / "first")
    await preparer.settle()
    heads = {git("rev-parse", "main", cwd=upstream)}

    async def move_and_fetch() -> None:
        for n in range(6):
            heads.add(commit_file(upstream, f"moved/{n % 3}.txt", f"move {n}\n"))
            await asyncio.to_thread(git, "push", "-q", "served", "main", cwd=upstream)
            await fetcher.ensure(url)

    async def prepare() -> list[Path]:
        done = []
        for n in range(6):
            workspace = await preparer.checkout(mirror, "main", tmp_path / "runs" / str(n))
            done.append(workspace.path)
            assert workspace.base_commit in heads
        return done

    _, runs = await asyncio.gather(move_and_fetch(), prepare())
    await fetcher.settle()
    await preparer.settle()
    for path in runs:
        assert git("status", "--porcelain", "--ignored", cwd=path) == ""
        assert git("write-tree", cwd=path) == git("rev-parse", "HEAD^{tree}", cwd=path)


async def test_a_first_run_clones_shallow_and_the_history_follows(
    served: tuple[CountingServer, str, Path], upstream: Path, tmp_path: Path
) -> None:
    _, url, _ = served
    mirrors = Mirrors(tmp_path / "cache")
    mirror = await mirrors.ensure(url)
    assert (mirror / "shallow").is_file(), "the first clone is shallow"
    assert "refs/heads/feature" not in git("--git-dir", str(mirror), "for-each-ref", "--format=%(refname)")

    workspace = await mirrors.checkout(mirror, "main", tmp_path / "runs" / "1")
    assert workspace.base_commit == git("rev-parse", "main", cwd=upstream)
    assert git("rev-parse", "--is-shallow-repository", cwd=workspace.path) == "true"
    await mirrors.settle()

    assert not (mirror / "shallow").exists(), "the rest of the history arrived in the background"
    refs = git("--git-dir", str(mirror), "for-each-ref", "--format=%(refname)").splitlines()
    assert refs == ["refs/heads/feature", "refs/heads/main", "refs/tags/v1"]
    assert git("--git-dir", str(mirror), "rev-list", "--count", "main") == "3"
    assert git("--git-dir", str(mirror), "fsck", "--strict", "--no-progress") == ""


async def test_a_run_of_another_branch_on_a_shallow_mirror_fetches_the_history_at_once(
    served: tuple[CountingServer, str, Path], upstream: Path, tmp_path: Path
) -> None:
    _, url, _ = served
    mirrors = Mirrors(tmp_path / "cache")
    mirror = await mirrors.ensure(url)
    async with asyncio.timeout(8):  # well before the history would start by itself
        workspace = await mirrors.checkout(mirror, "feature", tmp_path / "runs" / "1")
    assert workspace.base_commit == git("rev-parse", "feature", cwd=upstream)
    assert (workspace.path / "src" / "file1.txt").read_text() == "version 1\n"
    await mirrors.settle()


async def test_a_pull_requests_head_is_fetched_from_its_pull_ref_only_when_missing(tmp_path: Path) -> None:
    """A fork's commit is in the base repository only under refs/pull/<n>/head: the mirror fetches it by
    that ref when it lacks the commit, leaves it alone when it has it, and says so when it cannot get it."""
    origin = tmp_path / "origin"
    git("init", "-q", "-b", "main", str(origin))
    commit_file(origin, "a.txt", "a\n")
    mirrors = Mirrors(tmp_path / "data", spares=False)
    mirror = await mirrors.ensure(str(origin))
    base = git("rev-parse", "HEAD", cwd=origin).strip()
    await mirrors.fetch_pull(mirror, str(origin), None, 1, base)  # the mirror has it: no fetch
    assert git("--git-dir", str(mirror), "for-each-ref", "refs/routines/") == ""

    git("checkout", "-q", "-b", "fork-branch", cwd=origin)
    fork = commit_file(origin, "b.txt", "from a fork\n")
    git("update-ref", "refs/pull/1/head", fork, cwd=origin)
    git("checkout", "-q", "main", cwd=origin)
    git("branch", "-q", "-D", "fork-branch", cwd=origin)  # only the pull ref holds it now
    await mirrors.fetch_pull(mirror, str(origin), None, 1, fork)
    assert git("--git-dir", str(mirror), "rev-parse", "refs/routines/pull/1").strip() == fork
    workspace = await mirrors.checkout(mirror, fork, tmp_path / "run" / "repo")
    assert (workspace.path / "b.txt").read_text() == "from a fork\n"

    with pytest.raises(WorkspaceError, match="no longer has commit 1234567"):
        await mirrors.fetch_pull(mirror, str(origin), None, 1, "1234567" + fork[7:])
