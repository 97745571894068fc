"""The GitHub test server: App JWT rules, scoped tokens, git smart HTTP, pulls and conversations."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pygit2
import pytest
from githubkit import GitHub
from githubkit.exception import RequestFailed

from app.testing.github_server import GitHubState, create_app, generate_app_key
from app.testing.serve import serve_in_thread


@dataclass
class Hub:
    state: GitHubState
    url: str
    installation: int

    def app_jwt(self, key: str | None = None, lifetime_s: int = 540, iat_offset_s: int = -60, iss: Any = None) -> str:
        now = int(time.time())
        claims = {"iat": now + iat_offset_s, "exp": now + lifetime_s, "iss": iss or str(self.state.app_id)}
        return jwt.encode(claims, key or self.state.private_key, algorithm="RS256")

    def token(self, repos: list[str], permissions: dict[str, str]) -> str:
        answer = httpx.post(
            f"{self.url}/app/installations/{self.installation}/access_tokens",
            headers={"Authorization": f"Bearer {self.app_jwt()}"},
            json={"repositories": repos, "permissions": permissions},
        )
        assert answer.status_code == 201, answer.text
        token: str = answer.json()["token"]
        return token


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    state = GitHubState(tmp_path / "github")
    with serve_in_thread(create_app(state)) as served:
        state.base_url = served.url
        installation = state.add_installation("acme", {"contents": "write", "pull_requests": "write"})
        state.add_repo("acme/api", installation)
        state.add_repo("acme/web", installation)
        yield Hub(state, served.url, installation)


def git(*args: str, cwd: Path | None = None, token: str | None = None) -> subprocess.CompletedProcess[str]:
    auth = []
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        auth = ["-c", f"http.extraHeader=Authorization: Basic {basic}"]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *auth, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


def commit_file(workdir: Path, branch: str, name: str) -> None:
    assert git("checkout", "-q", "-b", branch, cwd=workdir).returncode == 0
    (workdir / name).write_text("change\n")
    assert git("add", name, cwd=workdir).returncode == 0
    assert git("commit", "-q", "-m", f"add {name}", cwd=workdir).returncode == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda hub: hub.app_jwt(key=generate_app_key()),
        lambda hub: hub.app_jwt(lifetime_s=-120, iat_offset_s=-600),
        lambda hub: hub.app_jwt(lifetime_s=3600),
        lambda hub: hub.app_jwt(iss="999"),
        lambda hub: jwt.encode({"iat": 0, "exp": 1, "iss": "1"}, "s" * 32, algorithm="HS256"),
    ],
    ids=["wrong-key", "expired", "too-long-lived", "other-app", "hs256"],
)
def test_app_jwt_breaking_a_rule_is_refused_like_github(hub: Hub, make: Any) -> None:
    answer = httpx.get(f"{hub.url}/app", headers={"Authorization": f"Bearer {make(hub)}"})
    assert answer.status_code == 401
    assert answer.json()["message"] and answer.json()["documentation_url"].startswith("https://docs.github.com")


def test_valid_app_jwt_reads_the_app_and_the_repo_installation(hub: Hub) -> None:
    headers = {"Authorization": f"Bearer {hub.app_jwt()}"}
    assert httpx.get(f"{hub.url}/app", headers=headers).json()["id"] == hub.state.app_id
    installation = httpx.get(f"{hub.url}/repos/acme/api/installation", headers=headers).json()
    assert installation["id"] == hub.installation
    assert httpx.get(f"{hub.url}/repos/acme/nope/installation", headers=headers).status_code == 404
    assert [(r.path, r.auth, r.status) for r in hub.state.requests[-1:]] == [
        ("/repos/acme/nope/installation", "jwt", 404)
    ]


def test_token_request_beyond_the_installation_is_refused(hub: Hub) -> None:
    headers = {"Authorization": f"Bearer {hub.app_jwt()}"}
    url = f"{hub.url}/app/installations/{hub.installation}/access_tokens"
    not_granted = httpx.post(url, headers=headers, json={"repositories": ["api"], "permissions": {"issues": "write"}})
    assert not_granted.status_code == 422
    assert "permissions requested are not granted" in not_granted.json()["message"]
    not_installed = httpx.post(url, headers=headers, json={"repositories": ["other"]})
    assert not_installed.status_code == 422


def test_token_scoped_to_one_repo_cannot_read_or_push_another(hub: Hub, tmp_path: Path) -> None:
    token = hub.token(["api"], {"contents": "write"})
    headers = {"Authorization": f"token {token}"}
    assert httpx.get(f"{hub.url}/repos/acme/api", headers=headers).status_code == 200
    assert httpx.get(f"{hub.url}/repos/acme/web", headers=headers).status_code == 404

    assert git("clone", "-q", f"{hub.url}/acme/web.git", str(tmp_path / "web"), token=token).returncode != 0
    clone = git("clone", "-q", f"{hub.url}/acme/api.git", str(tmp_path / "api"), token=token)
    assert clone.returncode == 0, clone.stderr
    commit_file(tmp_path / "api", "feature", "a.txt")
    pushed = git("push", "-q", f"{hub.url}/acme/web.git", "feature", cwd=tmp_path / "api", token=token)
    assert pushed.returncode != 0
    assert "refs/heads/feature" not in pygit2.Repository(str(hub.state.repos["acme/web"].path)).references


def test_git_cli_clones_and_pushes_with_a_token_and_gets_401_without(hub: Hub, tmp_path: Path) -> None:
    refs = httpx.get(f"{hub.url}/acme/api.git/info/refs", params={"service": "git-upload-pack"})
    assert refs.status_code == 401
    assert refs.headers["www-authenticate"] == 'Basic realm="GitHub"'
    assert git("clone", "-q", f"{hub.url}/acme/api.git", str(tmp_path / "anon")).returncode != 0

    token = hub.token(["api"], {"contents": "write"})
    assert git("clone", "-q", f"{hub.url}/acme/api.git", str(tmp_path / "api"), token=token).returncode == 0
    assert (tmp_path / "api" / "README.md").read_text() == "# api\n"
    commit_file(tmp_path / "api", "routines/fix/1", "fix.txt")
    pushed = git("push", "-q", "origin", "routines/fix/1", cwd=tmp_path / "api", token=token)
    assert pushed.returncode == 0, pushed.stderr
    bare = pygit2.Repository(str(hub.state.repos["acme/api"].path))
    assert "refs/heads/routines/fix/1" in bare.references


def test_read_only_and_expired_tokens_cannot_push(hub: Hub, tmp_path: Path) -> None:
    reader = hub.token(["api"], {"contents": "read"})
    assert git("clone", "-q", f"{hub.url}/acme/api.git", str(tmp_path / "api"), token=reader).returncode == 0
    commit_file(tmp_path / "api", "feature", "a.txt")
    refused = git("push", "-q", "origin", "feature", cwd=tmp_path / "api", token=reader)
    assert "403" in refused.stderr
    hub.state.expire_tokens()
    assert git("fetch", "-q", "origin", cwd=tmp_path / "api", token=reader).returncode != 0


def test_pygit2_clones_and_pushes_with_a_token(hub: Hub, tmp_path: Path) -> None:
    token = hub.token(["api"], {"contents": "write"})
    callbacks = pygit2.RemoteCallbacks(credentials=pygit2.UserPass("x-access-token", token))
    repo = pygit2.clone_repository(f"{hub.url}/acme/api.git", str(tmp_path / "api"), callbacks=callbacks)
    signature = pygit2.Signature("t", "t@example.invalid")
    (tmp_path / "api" / "b.txt").write_text("b\n")
    repo.index.add("b.txt")
    repo.index.write()
    head = repo.head.peel(pygit2.Commit)
    commit = repo.create_commit("refs/heads/from-pygit2", signature, signature, "b", repo.index.write_tree(), [head.id])
    repo.remotes["origin"].push(["refs/heads/from-pygit2"], callbacks=callbacks)
    bare = pygit2.Repository(str(hub.state.repos["acme/api"].path))
    assert bare.references["refs/heads/from-pygit2"].target == commit


def test_source_dir_becomes_the_initial_commit(hub: Hub, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "mod.py").write_text("x = 1\n")
    bare = hub.state.add_repo("acme/lib", hub.installation, source_dir=source, default_branch="trunk")
    blob = pygit2.Repository(str(bare)).revparse_single("trunk:pkg/mod.py")
    assert isinstance(blob, pygit2.Blob) and blob.data == b"x = 1\n"


async def test_pulls_reviews_comments_and_reactions_parse_in_githubkit(hub: Hub, tmp_path: Path) -> None:
    token = hub.token(["api"], {"contents": "write", "pull_requests": "write"})
    git("clone", "-q", f"{hub.url}/acme/api.git", str(tmp_path / "api"), token=token)
    commit_file(tmp_path / "api", "feature", "a.txt")
    git("push", "-q", "origin", "feature", cwd=tmp_path / "api", token=token)
    async with GitHub(token, base_url=hub.url + "/", http_cache=False, timeout=10) as gh:
        with pytest.raises(RequestFailed) as missing:
            await gh.rest.pulls.async_create("acme", "api", title="t", head="nope", base="main")
        assert missing.value.response.status_code == 422
        pull = await gh.rest.pulls.async_create("acme", "api", title="t", head="feature", base="main", draft=True)
        assert (pull.parsed_data.draft, pull.parsed_data.head.ref, pull.parsed_data.base.ref) == (
            True,
            "feature",
            "main",
        )
        with pytest.raises(RequestFailed) as twice:
            await gh.rest.pulls.async_create("acme", "api", title="t", head="feature", base="main")
        assert "already exists" in twice.value.response.text
        found = await gh.rest.pulls.async_list("acme", "api", head="acme:feature", state="open")
        assert [p.number for p in found.parsed_data] == [pull.parsed_data.number]
        number = pull.parsed_data.number
        comment = await gh.rest.issues.async_create_comment("acme", "api", number, body="hello")
        await gh.rest.issues.async_update_comment("acme", "api", comment.parsed_data.id, body="edited")
        inline = [{"path": "a.txt", "line": 1, "body": "nit"}]
        review = await gh.rest.pulls.async_create_review("acme", "api", number, event="COMMENT", comments=inline)
        assert review.parsed_data.state == "COMMENTED"
        reaction = await gh.rest.reactions.async_create_for_issue("acme", "api", number, content="rocket")
        assert reaction.parsed_data.content == "rocket"
    assert [c["body"] for c in hub.state.comments("acme/api")] == ["edited"]
    assert hub.state.reviews("acme/api")[0]["comments"] == inline
    assert hub.state.pulls("acme/api")[0]["draft"] is True


def test_pull_requests_need_the_pull_requests_permission(hub: Hub) -> None:
    token = hub.token(["api"], {"contents": "read"})
    answer = httpx.get(f"{hub.url}/repos/acme/api/pulls", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 403
    assert answer.json()["message"] == "Resource not accessible by integration"
