"""A stateful GitHub REST test server, with git smart HTTP on the same origin.

    state = GitHubState(tmp_path)
    served = serve_in_thread(create_app(state))
    state.base_url = served.url                 # API at the root, like api.github.com
    installation = state.add_installation("acme", {"contents": "write", "pull_requests": "write"})
    state.add_repo("acme/api", installation)     # clone_url: f"{served.url}/acme/api.git"

Point a client's GitHub API URL at `served.url`. Answers follow GitHub's REST schemas and status
codes; `state.requests` records every request for assertions.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.testing.git_http import git_endpoint
from app.testing.github_hooks import HooksApi
from app.testing.github_issues import IssuesApi
from app.testing.github_manifest import manifest_routes
from app.testing.github_pulls import PullsApi, bearer, read_json
from app.testing.github_shapes import app_json, error_json, installation_json, iso, repo_json
from app.testing.github_state import LEVELS, ApiError, GitHubState, LoggedRequest, generate_app_key

__all__ = ["ApiError", "GitHubState", "create_app", "generate_app_key"]

JSON = dict[str, Any]
NOT_ACCESSIBLE = "There is at least one repository that does not exist or is not accessible to the parent installation."


def create_app(state: GitHubState) -> Starlette:
    """The test server as an ASGI app over `state` (set `state.base_url` once it listens)."""
    apps = _AppsApi(state)
    pulls = PullsApi(state)
    hooks = HooksApi(state)
    issues = IssuesApi(state)
    routes = [
        Route("/app", apps.get_app),
        Route("/app/hook/deliveries", hooks.list_deliveries, methods=["GET"]),
        Route("/app/hook/deliveries/{delivery_id:int}/attempts", hooks.redeliver, methods=["POST"]),
        Route("/app/installations/{installation_id:int}/access_tokens", apps.create_token, methods=["POST"]),
        Route("/repos/{owner}/{repo}/installation", apps.get_repo_installation),
        Route("/repos/{owner}/{repo}", apps.get_repo),
        Route("/repos/{owner}/{repo}/collaborators/{username}/permission", apps.get_permission),
        Route("/repos/{owner}/{repo}/pulls", pulls.list_pulls, methods=["GET"]),
        Route("/repos/{owner}/{repo}/pulls", pulls.create_pull, methods=["POST"]),
        Route("/repos/{owner}/{repo}/pulls/{number:int}", pulls.get_pull),
        Route("/repos/{owner}/{repo}/pulls/{number:int}/files", pulls.list_files, methods=["GET"]),
        Route("/repos/{owner}/{repo}/pulls/{number:int}/reviews", pulls.create_review, methods=["POST"]),
        Route("/repos/{owner}/{repo}/issues", issues.list_issues, methods=["GET"]),
        Route("/repos/{owner}/{repo}/issues", issues.create_issue, methods=["POST"]),
        Route("/repos/{owner}/{repo}/issues/{number:int}", issues.get_issue, methods=["GET"]),
        Route("/repos/{owner}/{repo}/issues/{number:int}", issues.update_issue, methods=["PATCH"]),
        Route("/repos/{owner}/{repo}/issues/{number:int}/comments", pulls.create_comment, methods=["POST"]),
        Route("/repos/{owner}/{repo}/issues/comments/{comment_id:int}", pulls.update_comment, methods=["PATCH"]),
        Route("/repos/{owner}/{repo}/issues/{number:int}/reactions", pulls.create_reaction, methods=["POST"]),
        Route(
            "/repos/{owner}/{repo}/issues/comments/{comment_id:int}/reactions",
            pulls.create_comment_reaction,
            methods=["POST"],
        ),
        *manifest_routes(state),
        Route("/{owner}/{name}.git/{path:path}", git_endpoint(state), methods=["GET", "POST"]),
        Route("/{owner}/{repo}/pull/{number:int}", pulls.page),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},  # type: ignore[dict-item]
    )
    app.add_middleware(_RequestLog, state=state)
    return app


class _AppsApi:
    """App-level endpoints (App JWT) and the repository itself (installation token)."""

    def __init__(self, state: GitHubState) -> None:
        self.state = state

    def _app_auth(self, request: Request) -> None:
        value = bearer(request)
        if value is None:
            raise ApiError(401, "A JSON web token could not be decoded")
        self.state.verify_jwt(value)

    async def get_app(self, request: Request) -> Response:
        self._app_auth(request)
        return JSONResponse(app_json(self.state))

    async def get_repo_installation(self, request: Request) -> Response:
        self._app_auth(request)
        repo = self.state.repos.get(f"{request.path_params['owner']}/{request.path_params['repo']}")
        installation = self.state.installations.get(repo.installation_id) if repo else None
        if installation is None:
            raise ApiError(404, "Not Found")
        return JSONResponse(installation_json(self.state, installation))

    async def create_token(self, request: Request) -> Response:
        self._app_auth(request)
        installation = self.state.installations.get(request.path_params["installation_id"])
        if installation is None:
            raise ApiError(404, "Not Found")
        body = await read_json(request)
        wanted = body.get("permissions") or dict(installation.permissions)
        for name, level in wanted.items():
            granted = installation.permissions.get(name)
            if level not in LEVELS or granted is None or LEVELS[level] > LEVELS[granted]:
                raise ApiError(422, "The permissions requested are not granted to this installation.")
        by_id = {repo.id: repo.full_name for repo in self.state.repos.values()}
        names = [f"{installation.account}/{name}" for name in body.get("repositories") or []]
        names += [by_id.get(repo_id, "") for repo_id in body.get("repository_ids") or []]
        if any(name not in installation.repositories for name in names):
            raise ApiError(422, NOT_ACCESSIBLE)
        scope = names or list(installation.repositories)
        token = self.state.issue_token(installation.id, scope, {"metadata": "read", **wanted})
        answer = {
            "token": token.token,
            "expires_at": iso(token.expires_at),
            "permissions": token.permissions,
            "repository_selection": "selected",
            "repositories": [repo_json(self.state, self.state.repos[name]) for name in scope],
        }
        return JSONResponse(answer, status_code=201)

    async def get_repo(self, request: Request) -> Response:
        full_name = f"{request.path_params['owner']}/{request.path_params['repo']}"
        self.state.authorize(bearer(request), full_name, "metadata", "read")
        return JSONResponse(repo_json(self.state, self.state.repos[full_name]))

    async def get_permission(self, request: Request) -> Response:
        """A user's permission on the repository: GitHub's legacy `permission` (admin, write, read, none;
        maintain counts as write, triage as read) and the `role_name` it comes from."""
        full_name = f"{request.path_params['owner']}/{request.path_params['repo']}"
        self.state.authorize(bearer(request), full_name, "metadata", "read")
        login = request.path_params["username"]
        role = self.state.repos[full_name].collaborators.get(login, "none")
        legacy = {"maintain": "write", "triage": "read"}.get(role, role)
        user = {"login": login, "id": 10_000 + len(login), "type": "User"}
        return JSONResponse({"permission": legacy, "role_name": role, "user": user})


async def _api_error(request: Request, exc: ApiError) -> Response:
    return JSONResponse(error_json(exc.message, exc.status, exc.errors), status_code=exc.status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = "Not Found" if exc.status_code == 404 else str(exc.detail)
    return JSONResponse(error_json(message, exc.status_code), status_code=exc.status_code)


class _RequestLog:
    """Appends method, path, kind of credentials and status of every request to `state.requests`."""

    def __init__(self, app: ASGIApp, state: GitHubState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        entry = LoggedRequest(scope["method"], scope["path"], _auth_kind(headers.get(b"authorization", b"")))
        self.state.requests.append(entry)

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry.status = message["status"]
            await send(message)

        await self.app(scope, receive, logged_send)


def _auth_kind(header: bytes) -> str:
    scheme, _, value = header.decode("latin-1").partition(" ")
    scheme = scheme.lower()
    if not scheme:
        return "none"
    if scheme == "basic":
        return "basic"
    if scheme in ("bearer", "token"):
        return "jwt" if value.count(".") == 2 else "token"
    return "invalid"
