"""GitHub as a forge: App JWT, installation tokens scoped to one repository, pull requests, comments.

One githubkit client and one connection pool per process: build it once, use it as
`async with GitHubForge(...) as forge` (leaving the block closes the pool). Every githubkit or
httpx error becomes a ForgeError that names the repository and the fix; no message ever holds a
token or the key.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from githubkit import GitHub, UnauthAuthStrategy
from githubkit.exception import GitHubException, RequestFailed, RequestTimeout
from pydantic import ValidationError

from app.core.domain import PullRequest
from app.core.errors import ConfigError, ForgeError
from app.core.ports import Credentials, RepoInfo
from app.forge.github_errors import describe_failure, redact

JWT_BACKDATE_S = 60  # GitHub's advice: allow for clock drift between us and GitHub
JWT_LIFETIME_S = 540  # exp - iat is then 600 s, GitHub's maximum
JWT_RENEW_S = 60  # the App's JWT is signed again this long before it expires
READ_TOKEN_RENEW_S = 600  # a kept metadata-read token is minted again this long before it expires
# a request GitHub never answered because it closed the kept-alive connection is sent again when that is
# harmless: methods that are idempotent, and minting a token (a second one unused just expires)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
T = TypeVar("T")


class GitHubForge:
    """The `Forge` for GitHub (and GitHub Enterprise: `api_url` = https://HOST/api/v3)."""

    name = "github"

    def __init__(
        self,
        api_url: str,
        app_id: str,
        private_key: str,
        timeout_s: float = 30,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not str(app_id).isdigit():
            raise ConfigError(f"GitHub App id {app_id!r} is not a number; copy the App ID from the App settings")
        try:
            key = serialization.load_pem_private_key(private_key.encode(), password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(
                "the GitHub App private key is not a PEM RSA private key; "
                "use the .pem file downloaded from the GitHub App settings"
            )
        self.api_url = api_url.rstrip("/")
        self.app_id = str(app_id)
        self.timeout_s = timeout_s
        self._key = key
        self._granted: dict[int, dict[str, str]] = {}
        self._clock = clock
        self._jwt: tuple[str, int] | None = None  # (token, when it was signed)
        self._read_tokens: dict[tuple[int, str], tuple[str, float]] = {}  # (installation, repo) → (token, expiry)
        self._lookups: _Shared[RepoInfo] = _Shared()  # by repository, in lower case
        self._mints: _Shared[tuple[str, float]] = _Shared()  # by installation, repository and permissions
        self._transport = _SharedTransport()
        self._github: GitHub[UnauthAuthStrategy] = GitHub(
            base_url=self.api_url + "/",
            timeout=timeout_s,
            http_cache=False,
            user_agent="routines",
            async_transport=self._transport,
        )

    def __repr__(self) -> str:
        return f"GitHubForge(api_url={self.api_url!r}, app_id={self.app_id!r})"

    async def __aenter__(self) -> GitHubForge:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._transport.pool.aclose()

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        """The forge's connection pool, for App-level calls made outside githubkit (app/forge/github_app.py)."""
        return self._transport

    def app_jwt(self) -> str:
        """A JWT authenticating as the App: RS256, `iss` = app id, valid from a minute before it was signed for
        10 minutes. Signed once and used until a minute before it expires: each signature is an RSA
        private-key operation, and a run needs a few."""
        now = int(self._clock())
        if self._jwt is not None and self._jwt[1] <= now < self._jwt[1] + JWT_LIFETIME_S - JWT_RENEW_S:
            return self._jwt[0]
        claims = {"iat": now - JWT_BACKDATE_S, "exp": now + JWT_LIFETIME_S, "iss": self.app_id}
        token = jwt.encode(claims, self._key, algorithm="RS256")
        self._jwt = (token, now)
        return token

    async def resolve(self, repo: str) -> RepoInfo:
        """The repository `owner/name` as the App's installation sees it.

        Calls for one repository while a lookup of it is under way share that lookup (`_Shared`): a
        burst of runs of one routine asks GitHub once, not once per run. Names are compared as GitHub
        compares them, without case."""
        return await self._lookups.get(repo.lower(), lambda: self._resolve(repo))

    async def _resolve(self, repo: str) -> RepoInfo:
        owner, name = split_repo(repo)
        rest = self._github.rest
        installation = await self._call(
            "find the App installation", repo, rest.apps.async_get_repo_installation(owner, name, headers=self._app())
        )
        self._granted[installation.id] = {k: v for k, v in installation.permissions.model_dump().items() if v}
        key = (installation.id, repo.lower())
        kept = self._read_tokens.get(key)
        fresh = kept is None or self._clock() >= kept[1] - READ_TOKEN_RENEW_S
        if kept is None or fresh:  # not shared with runs (`_mint`): this one is kept, theirs never are
            kept = self._read_tokens[key] = await self._mint_now(installation.id, repo, {"metadata": "read"})
        try:
            found = await self._call(
                "read the repository", repo, rest.repos.async_get(owner, name, headers=_token(kept[0]))
            )
        except ForgeError:
            self._read_tokens.pop(key, None)
            if fresh:
                raise
            return await self._resolve(repo)  # the kept token was revoked, or the repository moved: a new one
        return RepoInfo(
            full_name=found.full_name,
            clone_url=found.clone_url,
            default_branch=found.default_branch,
            html_url=found.html_url,
            installation_id=installation.id,
        )

    async def credentials(self, repo: RepoInfo, permissions: dict[str, str]) -> Credentials:
        """A new installation token for this one repository with exactly `permissions` (expires in 1 h)."""
        if repo.installation_id is None:
            raise ForgeError(f"{repo.full_name} has no GitHub App installation; resolve it with the GitHub forge")
        token, _expires = await self._mint(repo.installation_id, repo.full_name, permissions)
        return Credentials("x-access-token", token)

    async def find_pull_request(self, repo: RepoInfo, head: str, creds: Credentials | None) -> PullRequest | None:
        """The open pull request whose head is branch `head` of this repository, if any."""
        owner, name = split_repo(repo.full_name)
        headers = await self._auth(repo, creds, "read")
        pulls = await self._call(
            f"list pull requests for {head}",
            repo.full_name,
            self._github.rest.pulls.async_list(owner, name, state="open", head=f"{owner}:{head}", headers=headers),
        )
        return PullRequest(number=pulls[0].number, url=pulls[0].html_url) if pulls else None

    async def open_pull_request(
        self,
        repo: RepoInfo,
        *,
        head: str,
        base: str,
        title: str,
        body: str,
        draft: bool,
        creds: Credentials | None,
    ) -> PullRequest:
        """Open a pull request from `head` into `base`; GitHub refuses a second open one for the same head."""
        owner, name = split_repo(repo.full_name)
        headers = await self._auth(repo, creds, "write")
        pull = await self._call(
            f"open a pull request from {head} into {base}",
            repo.full_name,
            self._github.rest.pulls.async_create(
                owner, name, title=title, head=head, base=base, body=body, draft=draft, headers=headers
            ),
        )
        return PullRequest(number=pull.number, url=pull.html_url)

    async def comment(self, repo: RepoInfo, number: int, body: str, creds: Credentials | None) -> int:
        """Comment on issue or pull request `number`; returns the comment id."""
        owner, name = split_repo(repo.full_name)
        headers = await self._auth(repo, creds, "write", permission="issues")
        created = await self._call(
            f"comment on #{number}",
            repo.full_name,
            self._github.rest.issues.async_create_comment(owner, name, number, body=body, headers=headers),
        )
        return int(created.id)

    async def update_comment(self, repo: RepoInfo, comment_id: int, body: str, creds: Credentials | None) -> None:
        """Replace the body of comment `comment_id`."""
        owner, name = split_repo(repo.full_name)
        headers = await self._auth(repo, creds, "write", permission="issues")
        await self._call(
            f"update comment {comment_id}",
            repo.full_name,
            self._github.rest.issues.async_update_comment(owner, name, comment_id, body=body, headers=headers),
        )

    def _app(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.app_jwt()}"}

    async def _mint(self, installation_id: int, full_name: str, permissions: dict[str, str]) -> tuple[str, float]:
        """A new token for `full_name` alone with `permissions`, and when it expires (seconds since the epoch).

        Calls for the same repository and permissions while such a token is being made share it
        (`_Shared`): the runs of a burst of one routine get one token between them, as scoped as each
        would have had, instead of one REST call each. A token is never kept for a later call here."""
        key = f"{installation_id}:{full_name.lower()}:{sorted(permissions.items())}"
        return await self._mints.get(key, lambda: self._mint_now(installation_id, full_name, permissions))

    async def _mint_now(self, installation_id: int, full_name: str, permissions: dict[str, str]) -> tuple[str, float]:
        _owner, name = split_repo(full_name)
        minted = await self._call(
            "create an installation token",
            full_name,
            self._github.rest.apps.async_create_installation_access_token(
                installation_id,
                repositories=[name],
                permissions=cast(Any, permissions),
                headers=self._app(),
            ),
            requested=permissions,
            granted=self._granted.get(installation_id),
        )
        return str(minted.token), datetime.fromisoformat(str(minted.expires_at)).timestamp()

    async def _auth(
        self, repo: RepoInfo, creds: Credentials | None, level: str, permission: str = "pull_requests"
    ) -> dict[str, str]:
        if creds is None:
            creds = await self.credentials(repo, {permission: level})
        return _token(creds.password)

    async def _call(self, action: str, repo: str, request: Any, **context: Any) -> Any:
        """Await a githubkit request and return its parsed body; failures become ForgeError."""
        try:
            response = await request
            return response.parsed_data
        except RequestFailed as exc:
            message = describe_failure(action, repo, exc.response.status_code, error_body(exc), **context)
        except RequestTimeout:
            message = (
                f"GitHub did not answer within {self.timeout_s:g} s while trying to {action} on {repo}; retry later"
            )
        except (GitHubException, ValidationError) as exc:
            message = (
                f"cannot {action} on {repo}: GitHub at {self.api_url} is unreachable or answered something "
                f"unexpected ({type(exc).__name__}); check GITHUB_API_URL and the network"
            )
        raise ForgeError(redact(message)) from None


class _Shared(Generic[T]):
    """Calls under way, by key, shared by whoever asks for the same key meanwhile.

    Each call runs as a task of its own, in a context of its own (what it logs is not attributed to the
    caller that happened to ask first), and is joined only by callers on its own event loop. Nothing is
    kept once it ends, so an answer is never older than the call it came from, and a caller that gives
    up does not cancel it for the others. A caller that joined a call which failed with ForgeError, or
    which was stopped under it (its event loop closing), asks once more (with the others that joined
    it), so one passing error does not fail every run of a burst."""

    def __init__(self) -> None:
        self._under_way: dict[str, asyncio.Task[T]] = {}

    async def get(self, key: str, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        joined = self._joinable(key)
        task = joined or self._start(key, call)
        try:
            return await asyncio.shield(task)
        except ForgeError:
            if joined is None:
                raise
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not task.cancelled() or (current is not None and current.cancelling()):
                raise  # this caller was cancelled, not the call
        return await asyncio.shield(self._joinable(key) or self._start(key, call))

    def _joinable(self, key: str) -> asyncio.Task[T] | None:
        task = self._under_way.get(key)
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            return None
        return task

    def _start(self, key: str, call: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Task[T]:
        task = self._under_way[key] = asyncio.get_running_loop().create_task(call(), context=contextvars.Context())
        task.add_done_callback(lambda done: self._ended(key, done))
        return task

    def _ended(self, key: str, done: asyncio.Task[T]) -> None:
        if self._under_way.get(key) is done:
            del self._under_way[key]
        if not done.cancelled():
            done.exception()  # retrieved: callers that gave up leave no "never retrieved" warning


class _SharedTransport(httpx.AsyncBaseTransport):
    """The forge's one connection pool, shared by the short-lived clients githubkit opens per call.

    githubkit keeps its entered client in a ContextVar, invisible to tasks of other contexts (a
    web lifespan's client is not seen by request handlers); sharing the transport works in any
    task. Closing a per-call client must not close the pool, so `aclose` is left to the forge.
    """

    def __init__(self) -> None:
        self.pool = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request`; once more on a new connection when the server closed a kept-alive one instead of
        answering (it closes idle ones when it likes, and one can close as we reuse it) and sending it
        again is harmless."""
        try:
            return await self.pool.handle_async_request(request)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            safe = request.method in IDEMPOTENT or (
                request.method == "POST" and request.url.path.endswith("/access_tokens")
            )
            if not safe:
                raise
            return await self.pool.handle_async_request(request)

    async def aclose(self) -> None:
        return None


def split_repo(repo: str) -> tuple[str, str]:
    owner, _, name = repo.partition("/")
    if not owner or not name or "/" in name:
        raise ForgeError(f"repository {repo!r} is not owner/name; write it like acme/api")
    return owner, name


def _token(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def error_body(exc: RequestFailed) -> dict[str, Any]:
    try:
        body = exc.response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
