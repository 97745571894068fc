"""Issues of the GitHub test server: create, list (by labels and state), read and update.

Every endpoint takes an installation token scoped to the repository with `issues` permission
(read to list and read, write to create and update). Issues written with a token are authored
by the App's bot. Pull requests are not listed here (GitHub lists them too; clients filter).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.testing.github_pulls import bearer, invalid, read_json
from app.testing.github_shapes import issue_json
from app.testing.github_state import ApiError, GitHubState, Repo

JSON = dict[str, Any]
STATES = ("open", "closed", "all")
MAX_BODY_CHARS = 65536


class IssuesApi:
    def __init__(self, state: GitHubState) -> None:
        self.state = state

    def _repo(self, request: Request, level: str) -> Repo:
        full_name = f"{request.path_params['owner']}/{request.path_params['repo']}"
        self.state.authorize(bearer(request), full_name, "issues", level)
        return self.state.repos[full_name]

    def _issue(self, repo: Repo, number: int) -> JSON:
        record = repo.issues.get(number)
        if record is None:
            raise ApiError(404, "Not Found")
        return record

    async def create_issue(self, request: Request) -> Response:
        repo = self._repo(request, "write")
        body = await read_json(request)
        if not isinstance(body.get("title"), str) or not body["title"].strip():
            raise invalid("Issue", "title", "missing_field")
        labels = _labels(body.get("labels"))
        number = self.state.add_issue(repo.full_name, body["title"], _text(body.get("body")), labels)
        repo.issues[number]["user"] = f"{self.state.app_slug}[bot]"
        return JSONResponse(issue_json(self.state, repo, repo.issues[number]), status_code=201)

    async def list_issues(self, request: Request) -> Response:
        repo = self._repo(request, "read")
        wanted = request.query_params.get("state", "open")
        if wanted not in STATES:
            raise invalid("Issue", "state")
        labels = [name.strip() for name in request.query_params.get("labels", "").split(",") if name.strip()]
        per_page = min(int(request.query_params.get("per_page", "30")), 100)
        page = max(int(request.query_params.get("page", "1")), 1)
        found = [
            record
            for record in sorted(repo.issues.values(), key=lambda r: r["number"], reverse=True)
            if wanted in ("all", record["state"]) and all(name in record["labels"] for name in labels)
        ]
        shown = found[(page - 1) * per_page : page * per_page]
        return JSONResponse([issue_json(self.state, repo, record) for record in shown])

    async def get_issue(self, request: Request) -> Response:
        repo = self._repo(request, "read")
        return JSONResponse(issue_json(self.state, repo, self._issue(repo, request.path_params["number"])))

    async def update_issue(self, request: Request) -> Response:
        repo = self._repo(request, "write")
        record = self._issue(repo, request.path_params["number"])
        body = await read_json(request)
        if "title" in body and (not isinstance(body["title"], str) or not body["title"].strip()):
            raise invalid("Issue", "title")
        if "state" in body and body["state"] not in ("open", "closed"):
            raise invalid("Issue", "state")
        for name in ("title", "state"):
            if name in body:
                record[name] = body[name]
        if "body" in body:
            record["body"] = _text(body["body"])
        if "labels" in body:
            record["labels"] = _labels(body["labels"])
        record["closed_at"] = time.time() if record["state"] == "closed" else None
        record["updated_at"] = time.time()
        return JSONResponse(issue_json(self.state, repo, record))


def _labels(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("Issue", "labels")
    names: list[str] = []
    for item in value:
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(name, str) or not name.strip():
            raise invalid("Issue", "labels")
        names.append(name)
    if any(len(name) > 50 for name in names):
        raise invalid("Label", "name", "custom", "name is too long (maximum is 50 characters)")
    return list(dict.fromkeys(names))


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise invalid("Issue", "body")
    if value is not None and len(value) > MAX_BODY_CHARS:
        raise invalid("Issue", "body", "custom", f"body is too long (maximum is {MAX_BODY_CHARS} characters)")
    return value
