"""GitHubForge against the GitHub test server: resolve, scoped tokens, draft PRs, comments, errors."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

from app.core.errors import ConfigError, ForgeError
from app.core.ports import Credentials, RepoInfo
from app.forge.github import GitHubForge
from app.testing.github_server import GitHubState, create_app, generate_app_key
from app.testing.serve import serve_in_thread


@dataclass
class Hub:
    state: GitHubState
    url: str
    installation: int

    def forge(self, key: str | None = None) -> GitHubForge:
        return GitHubForge(self.url, str(self.state.app_id), key or self.state.private_key, timeout_s=10)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    state = GitHubState(tmp_path / "github", app_id=4242)
    with serve_in_thread(create_app(state)) as served:
        state.base_url = served.url
        installation = state.add_installation("acme", {"contents": "write", "pull_requests": "write"})
        state.add_repo("acme/api", installation)
        state.add_repo("acme/web", installation)
        state.add_repo("other/lonely", None)
        yield Hub(state, served.url, installation)


def push_branch(creds: Credentials, clone_url: str, workdir: Path, branch: str) -> None:
    """Clone, commit one file on `branch` and push it, authenticating as the runner does."""
    basic = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    base = ["git", "-c", f"http.extraHeader=Authorization: Basic {basic}", "-c", "user.name=t", "-c", "user.email=t@t"]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    subprocess.run([*base, "clone", "-q", clone_url, str(workdir)], check=True, env=env)
    subprocess.run([*base, "checkout", "-q", "-b", branch], cwd=workdir, check=True, env=env)
    (workdir / "fix.txt").write_text("fixed\n")
    subprocess.run([*base, "add", "fix.txt"], cwd=workdir, check=True, env=env)
    subprocess.run([*base, "commit", "-q", "-m", "fix"], cwd=workdir, check=True, env=env)
    subprocess.run([*base, "push", "-q", "origin", branch], cwd=workdir, check=True, env=env)


def test_app_jwt_follows_githubs_rules(hub: Hub) -> None:
    claims = jwt.decode(hub.forge().app_jwt(), hub.state.public_key, algorithms=["RS256"])
    assert claims["iss"] == "4242"
    assert claims["exp"] - claims["iat"] == 600


def test_a_key_that_is_not_pem_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a PEM RSA private key"):
        GitHubForge("http://127.0.0.1:1", "1", "not a key")


async def test_resolve_reads_the_repo_through_its_installation(hub: Hub) -> None:
    async with hub.forge() as forge:
        info = await forge.resolve("acme/api")
    assert info == RepoInfo(
        full_name="acme/api",
        clone_url=f"{hub.url}/acme/api.git",
        default_branch="main",
        html_url=f"{hub.url}/acme/api",
        installation_id=hub.installation,
    )


async def test_resolve_of_a_repo_without_the_app_says_install_it(hub: Hub) -> None:
    async with hub.forge() as forge:
        with pytest.raises(ForgeError, match="not installed on other/lonely; install it"):
            await forge.resolve("other/lonely")
        with pytest.raises(ForgeError, match="not owner/name"):
            await forge.resolve("just-a-name")


async def test_credentials_are_scoped_to_one_repo_and_the_asked_permissions(hub: Hub) -> None:
    async with hub.forge() as forge:
        creds = await forge.credentials(await forge.resolve("acme/api"), {"contents": "read"})
    assert creds.username == "x-access-token"
    assert creds.password not in repr(creds)
    token = hub.state.tokens[creds.password]
    assert (token.repositories, token.permissions) == (["acme/api"], {"metadata": "read", "contents": "read"})
    headers = {"Authorization": f"token {creds.password}"}
    async with httpx.AsyncClient(base_url=hub.url, headers=headers) as client:
        assert (await client.get("/repos/acme/api")).status_code == 200
        assert (await client.get("/repos/acme/web")).status_code == 404


async def test_permission_not_granted_names_it_and_the_fix_without_secrets(hub: Hub) -> None:
    async with hub.forge() as forge:
        info = await forge.resolve("acme/api")
        with pytest.raises(ForgeError) as refused:
            await forge.credentials(info, {"contents": "write", "issues": "write"})
    message = str(refused.value)
    assert "permission issues=write is not granted to the App; add it in the App settings" in message
    assert "ghs_" not in message and "PRIVATE KEY" not in message and "eyJ" not in message


async def test_wrong_private_key_is_refused_with_a_fix(hub: Hub) -> None:
    async with hub.forge(key=generate_app_key()) as forge:
        with pytest.raises(ForgeError, match="GITHUB_APP_PRIVATE_KEY") as refused:
            await forge.resolve("acme/api")
    assert "eyJ" not in str(refused.value) and "PRIVATE KEY-" not in str(refused.value)


async def test_open_draft_pull_request_once_and_find_it(hub: Hub, tmp_path: Path) -> None:
    async with hub.forge() as forge:
        info = await forge.resolve("acme/api")
        creds = await forge.credentials(info, {"contents": "write", "pull_requests": "write"})
        push_branch(creds, info.clone_url, tmp_path / "work", "routines/fix/run1")
        assert await forge.find_pull_request(info, "routines/fix/run1", creds) is None
        opened = await forge.open_pull_request(
            info, head="routines/fix/run1", base="main", title="Fix", body="Done.", draft=True, creds=creds
        )
        with pytest.raises(ForgeError, match="already exists") as twice:
            await forge.open_pull_request(
                info, head="routines/fix/run1", base="main", title="Fix", body="Again", draft=True, creds=creds
            )
        assert creds.password not in str(twice.value)
        found = await forge.find_pull_request(info, "routines/fix/run1", None)
    assert found == opened
    assert opened.url == f"{hub.url}/acme/api/pull/{opened.number}"
    [pull] = hub.state.pulls("acme/api")
    assert (pull["draft"], pull["head"]["ref"], pull["base"]["ref"], pull["body"]) == (
        True,
        "routines/fix/run1",
        "main",
        "Done.",
    )


async def test_opening_a_pull_request_for_a_branch_never_pushed_explains_the_fix(hub: Hub) -> None:
    async with hub.forge() as forge:
        info = await forge.resolve("acme/api")
        with pytest.raises(ForgeError, match="head branch does not exist: push it"):
            await forge.open_pull_request(info, head="nope", base="main", title="t", body="", draft=True, creds=None)


async def test_comment_then_update_it(hub: Hub) -> None:
    number = hub.state.add_issue("acme/api", "Bug")
    hub.state.installations[hub.installation].permissions["issues"] = "write"
    async with hub.forge() as forge:
        info = await forge.resolve("acme/api")
        comment_id = await forge.comment(info, number, "Working on it", None)
        await forge.update_comment(info, comment_id, "Done", None)
    [comment] = hub.state.comments("acme/api")
    assert (comment["id"], comment["body"]) == (comment_id, "Done")


async def test_expired_token_is_refused_with_a_message_that_hides_it(hub: Hub) -> None:
    async with hub.forge() as forge:
        info = await forge.resolve("acme/api")
        creds = await forge.credentials(info, {"pull_requests": "read"})
        hub.state.expire_tokens()
        with pytest.raises(ForgeError, match="expired or was revoked") as refused:
            await forge.find_pull_request(info, "x", creds)
    assert creds.password not in str(refused.value)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_app_jwt_is_signed_once_and_again_a_minute_before_it_expires(hub: Hub) -> None:
    clock = Clock(1_700_000_000.0)
    forge = GitHubForge(hub.url, str(hub.state.app_id), hub.state.private_key, clock=clock)
    first = forge.app_jwt()
    clock.now += 479
    assert forge.app_jwt() == first
    clock.now += 1  # 480 s after signing: 60 s before its `exp`
    second = forge.app_jwt()
    assert second != first
    claims = jwt.decode(second, hub.state.public_key, algorithms=["RS256"], options={"verify_exp": False})
    assert (claims["iat"], claims["exp"]) == (int(clock.now) - 60, int(clock.now) + 540)


async def test_resolve_keeps_its_read_token_until_ten_minutes_before_it_expires(hub: Hub) -> None:
    hub.state.token_ttl_s = 900  # tokens that expire in 15 minutes: kept for 5
    clock = Clock(time.time())
    async with GitHubForge(hub.url, str(hub.state.app_id), hub.state.private_key, clock=clock) as forge:
        await forge.resolve("acme/api")
        clock.now += 299
        await forge.resolve("acme/api")
        assert len(hub.state.tokens) == 1
        await forge.resolve("acme/web")  # a token is for one repository
        assert len(hub.state.tokens) == 2
        clock.now += 2  # 599 s are left of the first one
        info = await forge.resolve("acme/api")
        assert len(hub.state.tokens) == 3 and info.full_name == "acme/api"


async def test_a_kept_read_token_that_was_revoked_is_replaced(hub: Hub) -> None:
    async with hub.forge() as forge:
        await forge.resolve("acme/api")
        hub.state.expire_tokens()
        info = await asyncio.wait_for(forge.resolve("acme/api"), 30)  # the retry must not wait for itself
    assert info.full_name == "acme/api" and len(hub.state.tokens) == 2


def lookups(hub: Hub, repo: str) -> int:
    """How often GitHub was asked which installation holds `repo`."""
    return sum(1 for r in hub.state.requests if r.path == f"/repos/{repo}/installation")


async def test_resolves_of_one_repo_under_way_together_share_one_lookup(hub: Hub) -> None:
    async with hub.forge() as forge:
        found = await asyncio.gather(*(forge.resolve("acme/api") for _ in range(10)), forge.resolve("acme/web"))
        assert {info.full_name for info in found} == {"acme/api", "acme/web"}
        assert (lookups(hub, "acme/api"), lookups(hub, "acme/web")) == (1, 1)
        assert sum(1 for r in hub.state.requests if r.path == "/repos/acme/api") == 1
        await forge.resolve("acme/api")  # nothing is kept once a lookup ends: the next call asks again
        assert lookups(hub, "acme/api") == 2


async def test_those_who_joined_a_failed_lookup_ask_once_more_together_and_nothing_is_kept(hub: Hub) -> None:
    async with hub.forge() as forge:
        failed = await asyncio.gather(*(forge.resolve("other/lonely") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(e, ForgeError) and "install" in str(e).lower() for e in failed), failed
        assert lookups(hub, "other/lonely") == 2  # the first caller's, then one more for the two who joined it
        with pytest.raises(ForgeError):
            await forge.resolve("other/lonely")
        assert lookups(hub, "other/lonely") == 3  # a failure is not kept either


async def test_a_caller_that_gives_up_leaves_the_shared_lookup_to_the_others(hub: Hub) -> None:
    async with hub.forge() as forge:
        quitter = asyncio.create_task(forge.resolve("acme/api"))
        stayer = asyncio.create_task(forge.resolve("acme/api"))
        await asyncio.sleep(0)  # both have joined the one lookup
        quitter.cancel()
        info = await stayer
        with pytest.raises(asyncio.CancelledError):
            await quitter
    assert info.full_name == "acme/api" and lookups(hub, "acme/api") == 1


async def test_names_that_differ_only_in_case_share_one_lookup(hub: Hub) -> None:
    async with hub.forge() as forge:
        found = await asyncio.gather(forge.resolve("acme/api"), forge.resolve("Acme/API"))
    assert [info.full_name for info in found] == ["acme/api", "acme/api"]
    assert sum(1 for r in hub.state.requests if r.path.lower() == "/repos/acme/api/installation") == 1


async def test_callers_of_a_lookup_that_was_stopped_under_them_ask_again(hub: Hub) -> None:
    """The shared lookup is a task of its own; stopped while its callers are not (their event loop closing
    it first, say), they ask once more rather than end cancelled themselves."""
    async with hub.forge() as forge:
        callers = [asyncio.create_task(forge.resolve("acme/api")) for _ in range(2)]
        await asyncio.sleep(0)  # both wait on the one lookup
        (lookup,) = [
            t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "GitHubForge._resolve"
        ]
        lookup.cancel()
        found = await asyncio.gather(*callers)
    assert [info.full_name for info in found] == ["acme/api", "acme/api"]


def mints(hub: Hub) -> int:
    """How often GitHub was asked for an installation token."""
    return sum(1 for r in hub.state.requests if r.method == "POST" and r.path.endswith("/access_tokens"))


async def test_tokens_asked_for_together_with_the_same_scope_are_one_token_and_none_is_kept(hub: Hub) -> None:
    async with hub.forge() as forge:
        info = await forge.resolve("acme/api")
        before = mints(hub)
        write = {"contents": "write", "pull_requests": "write"}
        reordered = {"pull_requests": "write", "contents": "write"}  # the same scope, written another way
        *same, narrower = await asyncio.gather(
            *(forge.credentials(info, dict(write)) for _ in range(4)),
            forge.credentials(info, reordered),
            forge.credentials(info, {"contents": "read"}),
        )
        assert mints(hub) - before == 2  # one for the five that asked for the same scope, one for the other
        assert len({c.password for c in same}) == 1 and narrower.password != same[0].password
        assert hub.state.tokens[narrower.password].permissions["contents"] == "read"
        later = await forge.credentials(info, write)
        assert mints(hub) - before == 3 and later.password != same[0].password, "a token is never kept"


@pytest.fixture
async def closing_server() -> AsyncIterator[tuple[str, list[str]]]:
    """Answers the first request of each connection (kept alive), then closes the connection when the next
    request comes on it, unanswered: what a server does that times an idle connection out as it is reused."""
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answered in (True, False):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next((ln.split(b":")[1] for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length")), 0)
            )
            await reader.readexactly(length)
            seen.append(head.split(b"\r\n")[0].decode())
            if answered:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", seen
    server.close()


async def test_a_request_the_server_dropped_on_a_reused_connection_is_sent_again_when_harmless(
    hub: Hub, closing_server: tuple[str, list[str]]
) -> None:
    url, seen = closing_server
    async with hub.forge() as forge, httpx.AsyncClient(transport=forge.transport, base_url=url) as client:
        assert (await client.get("/repos/acme/api")).status_code == 200
        assert (await client.get("/repos/acme/api")).status_code == 200  # dropped once, then sent again
        assert (await client.post("/app/installations/1/access_tokens", json={})).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/repos/acme/api/pulls", json={"title": "t"})  # may have been done: not again
    assert seen == [
        "GET /repos/acme/api HTTP/1.1",
        "GET /repos/acme/api HTTP/1.1",
        "GET /repos/acme/api HTTP/1.1",
        "POST /app/installations/1/access_tokens HTTP/1.1",
        "POST /app/installations/1/access_tokens HTTP/1.1",
        "POST /repos/acme/api/pulls HTTP/1.1",
    ]
