"""Mirrors and workspaces against real git: local repositories and smart HTTP served by `git http-backend`."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from app.core.errors import WorkspaceError
from app.core.ports import Credentials
from app.git.checkouts import checkout
from app.git.mirrors import Mirrors
from app.git.workspace import Workspace
from app.testing.git_http import basic_password, run_http_backend
from app.testing.serve import serve_in_thread
from tests.support.git import commit_file, git, snap

TOKEN = "ghs_test-token-0123456789"
CREDS = Credentials("x-access-token", TOKEN)








@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A non-bare repository on `main` with nested files, an executable, a symlink and a .gitignore."""
    repo = tmp_path / "origin"
    git("init", "-q", "-b", "main", str(repo))
    (repo / "src" / "pkg" / "deep").mkdir(parents=True)
    (repo / "README.md").write_text("# demo\n")
    (repo / "src" / "app.py").write_text("print('hello')\n")
    (repo / "src" / "pkg" / "deep" / "data.txt").write_text("one\ntwo\nthree\n")
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "readme-link").symlink_to("README.md")
    (repo / ".gitignore").write_text("*.log\nbuild/\n")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "initial", cwd=repo)
    return repo


class GitServer:
    """Smart HTTP over `root`; with a password, requests without it get 401 (and are counted)."""

    def __init__(self, root: Path, password: str | None) -> None:
        self.root = root
        self.password = password
        self.refused = 0

    async def endpoint(self, request: Request) -> Response:
        if self.password is not None and basic_password(request) != self.password:
            self.refused += "authorization" in request.headers
            return PlainTextResponse("no\n", status_code=401, headers={"WWW-Authenticate": 'Basic realm="git"'})
        return await run_http_backend(request, self.root, "/" + request.path_params["path"])


@pytest.fixture
def server(tmp_path: Path, origin: Path) -> Iterator[tuple[GitServer, str, Path]]:
    """(server, URL of acme/api, its bare repository) — a bare copy of `origin` served over HTTP."""
    bare = tmp_path / "served" / "acme" / "api.git"
    git("clone", "-q", "--bare", str(origin), str(bare))
    git_server = GitServer(tmp_path / "served", TOKEN)
    app = Starlette(routes=[Route("/{path:path}", git_server.endpoint, methods=["GET", "POST"])])
    with serve_in_thread(app) as served:
        yield git_server, f"{served.url}/acme/api.git", bare


def tracked_files(repo: Path) -> list[str]:
    return git("ls-files", cwd=repo).splitlines()


async def test_checkout_of_a_local_mirror_matches_the_repository(origin: Path, tmp_path: Path) -> None:
    mirror = await Mirrors(tmp_path / "cache").ensure(str(origin))
    ws = await checkout(mirror, "main", tmp_path / "run" / "work")

    for name in tracked_files(origin):
        if name == "readme-link":
            assert os.readlink(ws.path / name) == "README.md"
        else:
            assert (ws.path / name).read_bytes() == (origin / name).read_bytes(), name
    assert os.access(ws.path / "run.sh", os.X_OK)
    assert ws.base_commit == git("rev-parse", "HEAD", cwd=origin)
    assert ws.changed_files() == []
    assert git("status", "--porcelain", cwd=ws.path) == ""
    assert git("symbolic-ref", "HEAD", cwd=ws.path) == "refs/heads/main"


async def test_changes_commit_and_diff(origin: Path, tmp_path: Path) -> None:
    ws = await checkout(await Mirrors(tmp_path / "cache").ensure(str(origin)), "main", tmp_path / "work")
    assert await ws.commit("nothing", "Routines", "bot@example.com") is None

    (ws.path / "src" / "app.py").write_text("print('fixed')\n")
    (ws.path / "src" / "pkg" / "deep" / "data.txt").unlink()
    (ws.path / "NEW.md").write_text("new\n")
    (ws.path / "debug.log").write_text("ignored\n")
    (ws.path / "build").mkdir()
    (ws.path / "build" / "out.bin").write_text("ignored\n")
    await snap(ws)

    assert ws.changed_files() == ["NEW.md", "src/app.py", "src/pkg/deep/data.txt"]
    patch = ws.diff()
    assert "-print('hello')\n+print('fixed')" in patch
    assert "+++ b/NEW.md" in patch and "debug.log" not in patch
    sha = await ws.commit("Fix the greeting", "Routines", "bot@example.com")
    assert sha is not None and sha != ws.base_commit
    assert await ws.commit("again", "Routines", "bot@example.com") is None
    assert ws.changed_files() == ["NEW.md", "src/app.py", "src/pkg/deep/data.txt"]


async def test_mirror_over_http_fetches_new_commits(server: tuple[GitServer, str, Path], tmp_path: Path) -> None:
    _, url, bare = server
    mirrors = Mirrors(tmp_path / "cache")
    mirror = await mirrors.ensure(url, CREDS)

    upstream = tmp_path / "upstream"
    git("clone", "-q", str(bare), str(upstream))
    new_head = commit_file(upstream, "docs/later.md", "written after the mirror\n")
    git("push", "-q", "origin", "main", cwd=upstream)

    assert await mirrors.ensure(url, CREDS) == mirror
    ws = await checkout(mirror, "main", tmp_path / "work")
    assert ws.base_commit == new_head
    assert (ws.path / "docs" / "later.md").read_text() == "written after the mirror\n"
    assert TOKEN not in (mirror / "config").read_text()


async def test_refused_credentials_are_tried_once(server: tuple[GitServer, str, Path], tmp_path: Path) -> None:
    git_server, url, _ = server
    with pytest.raises(WorkspaceError) as refused:
        await Mirrors(tmp_path / "cache").ensure(url, Credentials("x-access-token", "ghs_wrong-secret"))
    message = str(refused.value)
    assert f"refused the credentials for {url}" in message
    assert "ghs_wrong-secret" not in message
    assert git_server.refused == 1

    with pytest.raises(WorkspaceError, match="asks for credentials and none were given"):
        await Mirrors(tmp_path / "cache").ensure(url, None)
    with pytest.raises(WorkspaceError, match="pass it as Credentials"):
        await Mirrors(tmp_path / "cache").ensure(url.replace("http://", f"http://x:{TOKEN}@"))


async def test_unknown_base_branch_names_the_repository_and_the_fix(
    server: tuple[GitServer, str, Path], tmp_path: Path
) -> None:
    _, url, _ = server
    mirror = await Mirrors(tmp_path / "cache").ensure(url, CREDS)
    with pytest.raises(WorkspaceError) as missing:
        await checkout(mirror, "mian", tmp_path / "work")
    assert str(missing.value).startswith(
        "branch 'mian' does not exist in acme/api; set `base:` to an existing branch (it has: main)"
    )


async def test_agent_git_directory_never_runs_on_the_host(origin: Path, tmp_path: Path) -> None:
    ws = await checkout(await Mirrors(tmp_path / "cache").ensure(str(origin)), "main", tmp_path / "work")
    marker = tmp_path / "pwned"
    hooks = ws.path / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for hook in ("pre-commit", "commit-msg", "post-commit", "pre-push"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marker}-{hook}\n")
        (hooks / hook).chmod(0o755)
    with (ws.path / ".git" / "config").open("a") as config:
        config.write(f"[core]\n\tfsmonitor = touch {marker}-fsmonitor\n\thooksPath = {hooks}\n")
        config.write(f'[filter "evil"]\n\tclean = touch {marker}-clean\n')
    (ws.path / ".gitattributes").write_text("*.py filter=evil\n")
    (ws.path / "src" / "app.py").write_text("print('changed')\n")
    await snap(ws)

    assert ws.changed_files() == [".gitattributes", "src/app.py"]
    sha = await ws.commit("Change the app", "Routines", "bot@example.com")
    await ws.push(str(origin), "routines/demo/run1", None)

    assert git("rev-parse", "routines/demo/run1", cwd=origin) == sha
    assert git("show", "routines/demo/run1:src/app.py", cwd=origin) == "print('changed')"
    assert [name for name in os.listdir(tmp_path) if name.startswith("pwned")] == []


async def test_push_to_a_local_repository_leaves_only_the_branch(origin: Path, tmp_path: Path) -> None:
    before = git("rev-parse", "HEAD", cwd=origin)
    ws = await checkout(await Mirrors(tmp_path / "cache").ensure(str(origin)), "main", tmp_path / "work")
    (ws.path / "src" / "new_module.py").write_text("VALUE = 1\n")
    await snap(ws)
    sha = await ws.commit("Add a module", "Routines", "bot@example.com")
    await ws.push(str(origin), "routines/demo/run2", None)

    assert git("log", "--format=%H %an %s", "-1", "routines/demo/run2", cwd=origin) == f"{sha} Routines Add a module"
    assert git("rev-parse", "routines/demo/run2^", cwd=origin) == before
    assert git("rev-parse", "HEAD", cwd=origin) == before
    assert git("status", "--porcelain", cwd=origin) == ""
    assert git("fsck", "--no-progress", cwd=origin) == ""


async def test_push_refuses_branches_outside_routines(origin: Path, tmp_path: Path) -> None:
    ws = await checkout(await Mirrors(tmp_path / "cache").ensure(str(origin)), "main", tmp_path / "work")
    (ws.path / "README.md").write_text("overwritten\n")
    await snap(ws)
    await ws.commit("Overwrite", "Routines", "bot@example.com")
    for branch in ("main", "feature/x", "routines/../main"):
        with pytest.raises(WorkspaceError, match="runs only push to branches named routines/"):
            await ws.push(str(origin), branch, None)
    assert (origin / "README.md").read_text() == "# demo\n"
    assert git("branch", "--format=%(refname:short)", cwd=origin) == "main"


async def test_push_over_http_and_server_refusal(server: tuple[GitServer, str, Path], tmp_path: Path) -> None:
    _, url, bare = server
    ws = await checkout(await Mirrors(tmp_path / "cache").ensure(url, CREDS), "main", tmp_path / "work")
    (ws.path / "README.md").write_text("# demo, improved\n")
    await snap(ws)
    sha = await ws.commit("Improve the readme", "Routines", "bot@example.com")
    await ws.push(url, "routines/demo/run3", CREDS)
    assert git("rev-parse", "refs/heads/routines/demo/run3", cwd=bare) == sha

    hook = bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'protected by policy' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(WorkspaceError) as refused:
        await ws.push(url, "routines/demo/run4", CREDS)
    assert f"{url} refused the push of routines/demo/run4" in str(refused.value)
    assert "declined" in str(refused.value)
    with pytest.raises(WorkspaceError, match="refused the credentials"):
        await ws.push(url, "routines/demo/run5", Credentials("x-access-token", "ghs_expired"))


async def test_a_follow_up_push_only_fast_forwards_over_http_and_locally(
    server: tuple[GitServer, str, Path], origin: Path, tmp_path: Path
) -> None:
    """Someone pushes to the pull request's branch while a follow-up run works: the run's push is refused
    with the reason and their commit stays; without that, the follow-up fast-forwards the branch."""
    _, url, bare = server
    branch = "routines/demo/pr"
    for remote, repo in ((url, bare), (str(origin), origin)):
        git("branch", "-f", branch, "main", cwd=repo)
        mirrors = Mirrors(tmp_path / f"cache-{repo.name}")
        creds = CREDS if remote == url else None
        runs = []
        for name in ("ahead", "behind"):
            mirror = await mirrors.ensure(remote, creds)
            ws = await mirrors.checkout(mirror, branch, tmp_path / f"{repo.name}-{name}")
            (ws.path / "README.md").write_text(f"# demo, {name}\n")
            await snap(ws)
            runs.append((ws, await ws.commit(f"Follow-up {name}", "Routines", "bot@example.com")))
        (first, first_sha), (second, _) = runs
        await first.push(remote, branch, creds, force=False)
        assert git("rev-parse", f"refs/heads/{branch}", cwd=repo) == first_sha, "a fast-forward is pushed"
        with pytest.raises(WorkspaceError, match=r"moved while the run worked \(someone pushed to it\)"):
            await second.push(remote, branch, creds, force=False)
        assert git("rev-parse", f"refs/heads/{branch}", cwd=repo) == first_sha, f"the other commit stays ({remote})"
        await second.push(remote, branch, creds)
        assert git("rev-parse", f"refs/heads/{branch}", cwd=repo) != first_sha, "a run's own branch is forced"


async def test_concurrent_ensure_in_tasks_and_processes(origin: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    script = (
        "import asyncio, sys; from pathlib import Path; from app.git.mirrors import Mirrors; "
        "print(asyncio.run(Mirrors(Path(sys.argv[1])).ensure(sys.argv[2])))"
    )
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(cache), str(origin), stdout=asyncio.subprocess.PIPE
        )
        for _ in range(2)
    ]
    mirrors = Mirrors(cache)
    paths = await asyncio.gather(*(mirrors.ensure(str(origin)) for _ in range(3)))
    outputs = [(await proc.communicate())[0].decode().strip() for proc in processes]

    assert {str(path) for path in paths} == {*outputs} == {str(mirrors.path_for(str(origin)))}
    assert [p.name for p in (cache / "mirrors").iterdir() if p.suffix not in (".lock", ".fetches")] == [paths[0].name]
    assert git("--git-dir", str(paths[0]), "fsck", "--strict", "--no-progress") == ""
    assert git("--git-dir", str(paths[0]), "rev-parse", "main") == git("rev-parse", "main", cwd=origin)


async def test_spare_work_tree_is_used_once_and_follows_new_commits(origin: Path, tmp_path: Path) -> None:
    mirrors = Mirrors(tmp_path / "cache", spares=True)
    mirror = await mirrors.ensure(str(origin))
    first = await mirrors.checkout(mirror, "main", tmp_path / "runs" / "1")
    await mirrors.settle()
    second = await mirrors.checkout(mirror, "main", tmp_path / "runs" / "2")
    await mirrors.settle()

    assert second.base_commit == first.base_commit
    assert sorted(tracked_files(second.path)) == sorted(tracked_files(origin))
    assert git("status", "--porcelain", cwd=second.path) == ""
    assert git("symbolic-ref", "HEAD", cwd=second.path) == "refs/heads/main"
    (second.path / "README.md").write_text("# from the spare\n")
    await snap(second)
    assert second.changed_files() == ["README.md"]
    assert first.changed_files() == []

    new_head = commit_file(origin, "later.txt", "later\n")
    await mirrors.ensure(str(origin))
    third = await mirrors.checkout(mirror, "main", tmp_path / "runs" / "3")
    assert third.base_commit == new_head and (third.path / "later.txt").exists()
    await mirrors.settle()

    reopened = Workspace.open(third.path)
    assert reopened.base_commit == new_head
    reopened.cleanup()
    assert not third.path.exists() and not (tmp_path / "runs" / "3.gitdir").exists()


async def test_the_worker_reads_no_git_file_of_the_agent(origin: Path, tmp_path: Path) -> None:
    """Diff, checkpoint and commit work on git objects only: a FIFO `.gitattributes` (which would block a
    reader) or one linked to a host file, made after the snapshot, is never opened by the worker."""
    ws = await checkout(await Mirrors(tmp_path / "cache").ensure(str(origin)), "main", tmp_path / "work")
    (ws.path / "README.md").write_text("# changed\n")
    await snap(ws)
    os.mkfifo(ws.path / ".gitattributes")
    (ws.path / "src" / ".gitattributes").symlink_to(tmp_path / "host-secret")
    (tmp_path / "host-secret").write_text("* diff=secret\n")

    async with asyncio.timeout(20):
        patch = await asyncio.to_thread(ws.diff)
        assert await ws.checkpoint("refs/routines/checkpoints/x") is not None
        assert await ws.commit("Change", "Routines", "bot@example.com") is not None
    assert "+# changed" in patch and ws.changed_files() == ["README.md"]
