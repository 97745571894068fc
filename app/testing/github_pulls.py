"""Pull requests, issue comments, reviews and reactions of the GitHub test server.

Every endpoint takes an installation token (`Authorization: token X` or `Bearer X`) scoped to
the repository: pull_requests for pulls and reviews, issues (or pull_requests on a pull
request) for comments and reactions. Refusals use GitHub's status codes and messages.
"""

from __future__ import annotations

import html
import json
from typing import Any

import pygit2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from app.testing.github_diff import FileDiff, pull_diff
from app.testing.github_repos import branch_sha, commits_between, set_pull_ref
from app.testing.github_shapes import comment_json, iso, pull_json, reaction_json, review_json
from app.testing.github_state import ApiError, GitHubState, Repo

JSON = dict[str, Any]
REACTIONS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes")
REVIEW_STATES = {"APPROVE": "APPROVED", "REQUEST_CHANGES": "CHANGES_REQUESTED", "COMMENT": "COMMENTED"}
NOT_IN_DIFF = "Pull request review thread line must be part of the diff"
PATH_NOT_IN_DIFF = "Path could not be resolved"


def bearer(request: Request) -> str | None:
    """The credential of an `Authorization: token X` or `Bearer X` header, or None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() in ("token", "bearer") else None


async def read_json(request: Request) -> JSON:
    """The request's JSON object body ({} when empty); 400 "Problems parsing JSON" otherwise."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "Problems parsing JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Problems parsing JSON")
    return body


def invalid(resource: str, field: str, code: str = "invalid", message: str | None = None) -> ApiError:
    error: JSON = {"resource": resource, "field": field, "code": code}
    if message:
        error["message"] = message
    return ApiError(422, "Validation Failed", [error])


class PullsApi:
    def __init__(self, state: GitHubState) -> None:
        self.state = state

    def _repo(self, request: Request, permission: str, level: str) -> Repo:
        full_name = f"{request.path_params['owner']}/{request.path_params['repo']}"
        self.state.authorize(bearer(request), full_name, permission, level)
        return self.state.repos[full_name]

    def _pull(self, repo: Repo, number: int) -> JSON:
        for pull in self.state.pull_requests.get(repo.full_name, []):
            if pull["number"] == number:
                return pull
        raise ApiError(404, "Not Found")

    def _issue_write(self, request: Request) -> Repo:
        """Write access to an issue's conversation: issues:write, or pull_requests:write on a PR."""
        number = request.path_params.get("number")
        try:
            return self._repo(request, "issues", "write")
        except ApiError as exc:
            if exc.status != 403:
                raise
            repo = self._repo(request, "pull_requests", "write")
            if number is None or any(p["number"] == number for p in self.state.pulls(repo.full_name)):
                return repo
            raise

    async def list_pulls(self, request: Request) -> Response:
        repo = self._repo(request, "pull_requests", "read")
        wanted_state = request.query_params.get("state", "open")
        head = request.query_params.get("head")
        base = request.query_params.get("base")
        found = [
            pull
            for pull in reversed(self.state.pulls(repo.full_name))
            if wanted_state in ("all", pull["state"])
            and (head is None or head in (pull["head"]["label"], pull["head"]["ref"]))
            and (base is None or base == pull["base"]["ref"])
        ]
        return JSONResponse(found)

    async def get_pull(self, request: Request) -> Response:
        repo = self._repo(request, "pull_requests", "read")
        return JSONResponse(self._current(repo, request.path_params["number"]))

    async def page(self, request: Request) -> Response:
        """The pull request's web page (what `html_url` opens), reduced to its title, state and body."""
        full_name = f"{request.path_params['owner']}/{request.path_params['repo']}"
        repo = self.state.repos.get(full_name)
        if repo is None:
            return HTMLResponse("<h1>404</h1>", status_code=404)
        pull = self._pull(repo, request.path_params["number"])
        state = "Draft" if pull.get("draft") else str(pull["state"]).title()
        body = (
            f"<!doctype html><title>{html.escape(str(pull['title']))} · Pull Request #{pull['number']}</title>"
            f"<h1 class='title'>{html.escape(str(pull['title']))} #{pull['number']}</h1>"
            f"<p class='state'>{state}</p><pre class='body'>{html.escape(str(pull.get('body') or ''))}</pre>"
        )
        return HTMLResponse(body)

    def _current(self, repo: Repo, number: int) -> JSON:
        """The pull request with `head.sha` following its branch, as pushes move it on GitHub (a fork's
        branch lives in the fork: its head stays where the test put it)."""
        pull = self._pull(repo, number)
        own = pull["head"]["repo"]["full_name"] == repo.full_name
        sha = branch_sha(repo.path, pull["head"]["ref"]) if pull["state"] == "open" and own else None
        if sha is not None and sha != pull["head"]["sha"]:
            pull["head"]["sha"] = sha
            pull["commits"] = commits_between(repo.path, pull["base"]["sha"], sha)
            set_pull_ref(repo.path, number, sha)
        return pull

    def _diff(self, repo: Repo, pull: JSON) -> list[FileDiff]:
        base = branch_sha(repo.path, pull["base"]["ref"]) or pull["base"]["sha"]
        api = f"{self.state.base_url}/repos/{repo.full_name}"
        html = f"{self.state.base_url}/{repo.full_name}"
        return pull_diff(repo.path, base, pull["head"]["sha"], html, api)

    async def list_files(self, request: Request) -> Response:
        """`GET /pulls/{n}/files`: the changed files with their patches, paginated (at most 3000 files)."""
        repo = self._repo(request, "pull_requests", "read")
        pull = self._current(repo, request.path_params["number"])
        per_page = min(int(request.query_params.get("per_page", "30")), 100)
        page = max(int(request.query_params.get("page", "1")), 1)
        entries = [found.entry for found in self._diff(repo, pull)][:3000]
        return JSONResponse(entries[(page - 1) * per_page : page * per_page])

    async def create_pull(self, request: Request) -> Response:
        repo = self._repo(request, "pull_requests", "write")
        body = await read_json(request)
        for field in ("title", "head", "base"):
            if not isinstance(body.get(field), str) or not body[field]:
                raise invalid("PullRequest", field, "missing_field")
        owner = repo.full_name.split("/")[0]
        head_owner, _, head = body["head"].rpartition(":")
        head_sha = branch_sha(repo.path, head) if head_owner in ("", owner) else None
        if head_sha is None:
            raise invalid("PullRequest", "head")
        base_sha = branch_sha(repo.path, body["base"])
        if base_sha is None:
            raise invalid("PullRequest", "base")
        for pull in self.state.pulls(repo.full_name):
            if pull["state"] == "open" and pull["head"]["ref"] == head and pull["base"]["ref"] == body["base"]:
                raise ApiError(
                    422, "Validation Failed", [_custom(f"A pull request already exists for {owner}:{head}.")]
                )
        ahead = commits_between(repo.path, base_sha, head_sha)
        if ahead == 0:
            raise ApiError(422, "Validation Failed", [_custom(f"No commits between {body['base']} and {head}")])
        number = repo.next_number
        repo.next_number += 1
        fields = {
            "title": body["title"],
            "body": body.get("body"),
            "draft": bool(body.get("draft", False)),
            "state": "open",
            "head": {"ref": head, "sha": head_sha},
            "base": {"ref": body["base"], "sha": base_sha},
            "commits": ahead,
            "created_at": iso(),
        }
        pull = pull_json(self.state, repo, number, fields)
        self.state.pull_requests.setdefault(repo.full_name, []).append(pull)
        set_pull_ref(repo.path, number, head_sha)
        return JSONResponse(pull, status_code=201)

    async def create_comment(self, request: Request) -> Response:
        repo = self._issue_write(request)
        number = request.path_params["number"]
        body = await read_json(request)
        if not isinstance(body.get("body"), str) or not body["body"]:
            raise invalid("IssueComment", "body", "missing_field")
        if number not in repo.issues and not any(p["number"] == number for p in self.state.pulls(repo.full_name)):
            raise ApiError(404, "Not Found")
        comment = comment_json(self.state, repo, number, self.state.new_id(), body["body"])
        self.state.issue_comments.setdefault(repo.full_name, []).append(comment)
        return JSONResponse(comment, status_code=201)

    async def update_comment(self, request: Request) -> Response:
        repo = self._issue_write(request)
        body = await read_json(request)
        if not isinstance(body.get("body"), str) or not body["body"]:
            raise invalid("IssueComment", "body", "missing_field")
        for comment in self.state.issue_comments.get(repo.full_name, []):
            if comment["id"] == request.path_params["comment_id"]:
                comment["body"] = body["body"]
                comment["updated_at"] = iso()
                return JSONResponse(comment)
        raise ApiError(404, "Not Found")

    async def create_review(self, request: Request) -> Response:
        repo = self._repo(request, "pull_requests", "write")
        number = request.path_params["number"]
        self._pull(repo, number)
        body = await read_json(request)
        event = body.get("event")
        if event is not None and event not in REVIEW_STATES:
            raise invalid("PullRequestReview", "event")
        comments = body.get("comments") or []
        for comment in comments:
            if not isinstance(comment, dict) or not comment.get("path") or not comment.get("body"):
                raise invalid("PullRequestReviewComment", "path", "missing_field")
            if "line" not in comment and "position" not in comment:
                raise invalid("PullRequestReviewComment", "line", "missing_field")
        if event in ("REQUEST_CHANGES", "COMMENT") and not body.get("body") and not comments:
            raise ApiError(422, "Unprocessable Entity", [_custom(f"Review body is required for {event}")])
        pull = self._current(repo, number)
        if comments:
            _check_lines(comments, {found.entry["filename"]: found for found in self._diff(repo, pull)})
        fields = {
            "body": body.get("body") or "",
            "state": REVIEW_STATES.get(event or "", "PENDING"),
            "commit_id": body.get("commit_id") or pull["head"]["sha"],
            "comments": comments,
        }
        review = review_json(self.state, repo, number, self.state.new_id(), fields)
        self.state.pull_reviews.setdefault(repo.full_name, []).append(review)
        return JSONResponse(review)

    async def create_reaction(self, request: Request) -> Response:
        repo = self._issue_write(request)
        number = request.path_params["number"]
        content = (await read_json(request)).get("content")
        if content not in REACTIONS:
            raise invalid("Reaction", "content")
        if number not in repo.issues and not any(p["number"] == number for p in self.state.pulls(repo.full_name)):
            raise ApiError(404, "Not Found")
        reactions = self.state.reactions.setdefault(repo.full_name, [])
        for existing in reactions:
            if existing.get("issue_number") == number and existing["reaction"]["content"] == content:
                return JSONResponse(existing["reaction"])
        reaction = reaction_json(self.state, self.state.new_id(), content)
        reactions.append({"issue_number": number, "reaction": reaction})
        return JSONResponse(reaction, status_code=201)

    async def create_comment_reaction(self, request: Request) -> Response:
        """React to an issue comment; recorded in `reactions` with its `comment_id`."""
        repo = self._issue_write(request)
        comment_id = request.path_params["comment_id"]
        content = (await read_json(request)).get("content")
        if content not in REACTIONS:
            raise invalid("Reaction", "content")
        if not any(c["id"] == comment_id for c in self.state.comments(repo.full_name)):
            raise ApiError(404, "Not Found")
        reactions = self.state.reactions.setdefault(repo.full_name, [])
        for existing in reactions:
            if existing.get("comment_id") == comment_id and existing["reaction"]["content"] == content:
                return JSONResponse(existing["reaction"])
        reaction = reaction_json(self.state, self.state.new_id(), content)
        reactions.append({"comment_id": comment_id, "reaction": reaction})
        return JSONResponse(reaction, status_code=201)


def _check_lines(comments: list[JSON], files: dict[str, FileDiff]) -> None:
    """422 as GitHub answers when an inline comment targets a file or line outside the pull request's diff."""
    for comment in comments:
        if "line" not in comment:
            continue
        found = files.get(comment["path"])
        if found is None:
            raise ApiError(422, "Unprocessable Entity", [PATH_NOT_IN_DIFF])
        side = comment.get("side", "RIGHT")
        lines = found.left if side == "LEFT" else found.right
        wanted = [comment["line"]] + ([comment["start_line"]] if "start_line" in comment else [])
        if side not in ("LEFT", "RIGHT") or not all(isinstance(n, int) and n in lines for n in wanted):
            raise ApiError(422, "Unprocessable Entity", [NOT_IN_DIFF])


def _custom(message: str) -> JSON:
    return {"resource": "PullRequest", "code": "custom", "message": message}


def open_fork_pull(
    state: GitHubState, full_name: str, fork_owner: str, head_ref: str, files: dict[str, str], title: str
) -> int:
    """A pull request into the default branch of `full_name` from branch `head_ref` of the fork
    `fork_owner/<name>`, whose commit changes `files`. As on GitHub, the base repository holds the fork's
    commit only under `refs/pull/<n>/head`: its own branch of the same name (if any) is another commit."""
    repo = state.repos[full_name]
    git = pygit2.Repository(str(repo.path))
    base = git.references[f"refs/heads/{repo.default_branch}"].peel(pygit2.Commit)
    index = pygit2.Index()
    index.read_tree(base.tree)
    for path, text in files.items():
        index.add(pygit2.IndexEntry(path, git.create_blob(text.encode()), pygit2.enums.FileMode.BLOB))
    who = pygit2.Signature("mallory", "mallory@example.invalid")
    head = str(git.create_commit(None, who, who, title, index.write_tree(git), [base.id]))
    number = repo.next_number
    repo.next_number += 1
    fields = {
        "title": title,
        "body": "",
        "draft": False,
        "state": "open",
        "head": {"ref": head_ref, "sha": head},
        "base": {"ref": repo.default_branch, "sha": str(base.id)},
        "commits": commits_between(repo.path, str(base.id), head),
        "created_at": iso(),
    }
    pull = pull_json(state, repo, number, fields)
    fork = {**pull["head"]["repo"], "full_name": f"{fork_owner}/{full_name.split('/')[1]}", "fork": True}
    fork["owner"] = {**fork["owner"], "login": fork_owner}
    pull["head"] = {**pull["head"], "label": f"{fork_owner}:{head_ref}", "repo": fork, "user": fork["owner"]}
    state.pull_requests.setdefault(full_name, []).append(pull)
    set_pull_ref(repo.path, number, head)
    return number
