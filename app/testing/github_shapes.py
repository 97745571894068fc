"""JSON bodies of the GitHub test server, shaped like GitHub's REST schemas.

Each builder fills every field the REST schema marks required, so typed clients (githubkit's
pydantic models) parse them as they parse GitHub's answers.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

from app.testing.github_state import GitHubState, Installation, Repo

JSON = dict[str, Any]
DOCS = "https://docs.github.com/rest"


def iso(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


def user_json(state: GitHubState, login: str, user_id: int, kind: str = "User") -> JSON:
    url = f"{state.base_url}/users/{login}"
    return {
        "login": login,
        "id": user_id,
        "node_id": f"U_{user_id}",
        "avatar_url": f"{state.base_url}/avatars/{login}",
        "gravatar_id": "",
        "url": url,
        "html_url": f"{state.base_url}/{login}",
        "followers_url": f"{url}/followers",
        "following_url": f"{url}/following{{/other_user}}",
        "gists_url": f"{url}/gists{{/gist_id}}",
        "starred_url": f"{url}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{url}/subscriptions",
        "organizations_url": f"{url}/orgs",
        "repos_url": f"{url}/repos",
        "events_url": f"{url}/events{{/privacy}}",
        "received_events_url": f"{url}/received_events",
        "type": kind,
        "site_admin": False,
    }


def bot_json(state: GitHubState) -> JSON:
    """The App's bot user: the author of everything written with an installation token."""
    return user_json(state, f"{state.app_slug}[bot]", state.app_id + 40_000_000, "Bot")


def owner_json(state: GitHubState, repo: Repo) -> JSON:
    owner = repo.full_name.split("/")[0]
    installation = state.installations.get(repo.installation_id)
    kind = installation.account_type if installation else "User"
    return user_json(state, owner, zlib.crc32(owner.encode()) % 10_000_000, kind)


def repo_json(state: GitHubState, repo: Repo) -> JSON:
    api = f"{state.base_url}/repos/{repo.full_name}"
    html = f"{state.base_url}/{repo.full_name}"
    templated = [
        "archive_url",
        "assignees_url",
        "blobs_url",
        "branches_url",
        "collaborators_url",
        "comments_url",
        "commits_url",
        "compare_url",
        "contents_url",
        "git_commits_url",
        "git_refs_url",
        "git_tags_url",
        "issue_comment_url",
        "issue_events_url",
        "issues_url",
        "keys_url",
        "labels_url",
        "merges_url",
        "milestones_url",
        "notifications_url",
        "pulls_url",
        "releases_url",
        "statuses_url",
        "trees_url",
    ]
    plain = [
        "contributors_url",
        "deployments_url",
        "downloads_url",
        "events_url",
        "forks_url",
        "hooks_url",
        "languages_url",
        "stargazers_url",
        "subscribers_url",
        "subscription_url",
        "tags_url",
        "teams_url",
    ]
    urls = {name: f"{api}/{name.removesuffix('_url')}{{/id}}" for name in templated}
    urls.update({name: f"{api}/{name.removesuffix('_url')}" for name in plain})
    counts = dict.fromkeys(
        [
            "forks_count",
            "stargazers_count",
            "watchers_count",
            "size",
            "open_issues_count",
            "subscribers_count",
            "network_count",
            "forks",
            "open_issues",
            "watchers",
        ],
        0,
    )
    flags = dict.fromkeys(["fork", "has_pages", "has_discussions", "archived", "disabled"], False)
    return {
        "id": repo.id,
        "node_id": f"R_{repo.id}",
        "name": repo.full_name.split("/")[1],
        "full_name": repo.full_name,
        "owner": owner_json(state, repo),
        "private": repo.private,
        "visibility": "private" if repo.private else "public",
        "html_url": html,
        "description": None,
        "url": api,
        "git_url": f"git://{state.base_url.split('://')[-1]}/{repo.full_name}.git",
        "ssh_url": f"git@example.invalid:{repo.full_name}.git",
        "clone_url": f"{html}.git",
        "svn_url": html,
        "mirror_url": None,
        "homepage": None,
        "language": None,
        "default_branch": repo.default_branch,
        "has_issues": True,
        "has_projects": True,
        "has_wiki": True,
        "pushed_at": iso(),
        "created_at": iso(),
        "updated_at": iso(),
        "license": None,
        **urls,
        **counts,
        **flags,
    }


def installation_json(state: GitHubState, installation: Installation) -> JSON:
    account = user_json(state, installation.account, installation.id + 1, installation.account_type)
    return {
        "id": installation.id,
        "account": account,
        "repository_selection": "selected",
        "access_tokens_url": f"{state.base_url}/app/installations/{installation.id}/access_tokens",
        "repositories_url": f"{state.base_url}/installation/repositories",
        "html_url": f"{state.base_url}/organizations/{installation.account}/settings/installations/{installation.id}",
        "app_id": state.app_id,
        "app_slug": state.app_slug,
        "target_id": account["id"],
        "target_type": installation.account_type,
        "permissions": installation.permissions,
        "events": ["issues", "issue_comment", "pull_request", "push"],
        "created_at": iso(),
        "updated_at": iso(),
        "single_file_name": None,
        "suspended_by": None,
        "suspended_at": None,
    }


def app_json(state: GitHubState) -> JSON:
    return {
        "id": state.app_id,
        "slug": state.app_slug,
        "node_id": f"A_{state.app_id}",
        "client_id": f"Iv1.{state.app_id:016x}",
        "owner": user_json(state, "routines-owner", 1, "Organization"),
        "name": state.app_slug,
        "description": "GitHub App served by the routines test server",
        "external_url": state.base_url,
        "html_url": f"{state.base_url}/apps/{state.app_slug}",
        "created_at": iso(),
        "updated_at": iso(),
        "permissions": {"metadata": "read", "contents": "write", "pull_requests": "write", "issues": "write"},
        "events": ["issues", "issue_comment", "pull_request", "push"],
        "installations_count": len(state.installations),
    }


def pull_json(state: GitHubState, repo: Repo, number: int, fields: JSON) -> JSON:
    """A pull request; `fields` holds title, body, draft, head/base (ref, sha), merged, state."""
    api = f"{state.base_url}/repos/{repo.full_name}"
    html = f"{state.base_url}/{repo.full_name}/pull/{number}"
    owner = repo.full_name.split("/")[0]
    repository = repo_json(state, repo)
    ends = {
        side: {
            "label": f"{owner}:{fields[side]['ref']}",
            "ref": fields[side]["ref"],
            "sha": fields[side]["sha"],
            "repo": repository,
            "user": repository["owner"],
        }
        for side in ("head", "base")
    }
    links = {
        "self": f"{api}/pulls/{number}",
        "html": html,
        "issue": f"{api}/issues/{number}",
        "comments": f"{api}/issues/{number}/comments",
        "review_comments": f"{api}/pulls/{number}/comments",
        "review_comment": f"{api}/pulls/comments{{/number}}",
        "commits": f"{api}/pulls/{number}/commits",
        "statuses": f"{api}/statuses/{fields['head']['sha']}",
    }
    return {
        "url": links["self"],
        "id": repo.id * 100_000 + number,
        "node_id": f"PR_{repo.id}_{number}",
        "html_url": html,
        "diff_url": f"{html}.diff",
        "patch_url": f"{html}.patch",
        "issue_url": links["issue"],
        "commits_url": links["commits"],
        "review_comments_url": links["review_comments"],
        "review_comment_url": links["review_comment"],
        "comments_url": links["comments"],
        "statuses_url": links["statuses"],
        "number": number,
        "state": fields["state"],
        "locked": False,
        "title": fields["title"],
        "user": bot_json(state),
        "body": fields["body"],
        "labels": [],
        "milestone": None,
        "created_at": fields["created_at"],
        "updated_at": iso(),
        "closed_at": None,
        "merged_at": None,
        "merge_commit_sha": None,
        "head": ends["head"],
        "base": ends["base"],
        "_links": {name: {"href": href} for name, href in links.items()},
        "author_association": "NONE",
        "auto_merge": None,
        "draft": fields["draft"],
        "merged": False,
        "mergeable": None,
        "mergeable_state": "unknown",
        "merged_by": None,
        "comments": 0,
        "review_comments": 0,
        "maintainer_can_modify": False,
        "commits": fields["commits"],
        "additions": 0,
        "deletions": 0,
        "changed_files": 0,
    }


def comment_json(state: GitHubState, repo: Repo, number: int, comment_id: int, body: str) -> JSON:
    api = f"{state.base_url}/repos/{repo.full_name}"
    return {
        "id": comment_id,
        "node_id": f"IC_{comment_id}",
        "url": f"{api}/issues/comments/{comment_id}",
        "html_url": f"{state.base_url}/{repo.full_name}/issues/{number}#issuecomment-{comment_id}",
        "issue_url": f"{api}/issues/{number}",
        "body": body,
        "user": bot_json(state),
        "author_association": "NONE",
        "created_at": iso(),
        "updated_at": iso(),
    }


def review_json(state: GitHubState, repo: Repo, number: int, review_id: int, fields: JSON) -> JSON:
    """A review; `fields` holds body, state, commit_id and the inline `comments` as sent."""
    pull_url = f"{state.base_url}/repos/{repo.full_name}/pulls/{number}"
    html = f"{state.base_url}/{repo.full_name}/pull/{number}#pullrequestreview-{review_id}"
    return {
        "id": review_id,
        "node_id": f"PRR_{review_id}",
        "user": bot_json(state),
        "body": fields["body"],
        "state": fields["state"],
        "html_url": html,
        "pull_request_url": pull_url,
        "_links": {"html": {"href": html}, "pull_request": {"href": pull_url}},
        "submitted_at": iso(),
        "commit_id": fields["commit_id"],
        "author_association": "NONE",
        "comments": fields["comments"],
    }


def reaction_json(state: GitHubState, reaction_id: int, content: str) -> JSON:
    return {
        "id": reaction_id,
        "node_id": f"REA_{reaction_id}",
        "user": bot_json(state),
        "content": content,
        "created_at": iso(),
    }


def error_json(message: str, status: int, errors: list[Any] | None = None) -> JSON:
    body: JSON = {"message": message, "documentation_url": DOCS, "status": str(status)}
    if errors is not None:
        body["errors"] = errors
    return body


def label_json(state: GitHubState, repo: Repo, name: str) -> JSON:
    label_id = zlib.crc32(f"{repo.full_name}:{name}".encode())
    return {
        "id": label_id,
        "node_id": f"LA_{label_id}",
        "url": f"{state.base_url}/repos/{repo.full_name}/labels/{name}",
        "name": name,
        "description": None,
        "color": "ededed",
        "default": False,
    }


def issue_json(state: GitHubState, repo: Repo, record: JSON) -> JSON:
    """An issue from its stored `record` (number, title, body, state, labels, user, timestamps)."""
    number = record["number"]
    api = f"{state.base_url}/repos/{repo.full_name}"
    author = record.get("user") or "octocat"
    user = bot_json(state) if author.endswith("[bot]") else user_json(state, author, zlib.crc32(author.encode()))
    closed = record.get("closed_at")
    return {
        "id": repo.id * 100_000 + number,
        "node_id": f"I_{repo.id}_{number}",
        "url": f"{api}/issues/{number}",
        "repository_url": api,
        "labels_url": f"{api}/issues/{number}/labels{{/name}}",
        "comments_url": f"{api}/issues/{number}/comments",
        "events_url": f"{api}/issues/{number}/events",
        "html_url": f"{state.base_url}/{repo.full_name}/issues/{number}",
        "number": number,
        "state": record.get("state", "open"),
        "state_reason": None,
        "title": record["title"],
        "body": record.get("body"),
        "user": user,
        "labels": [label_json(state, repo, name) for name in record.get("labels", [])],
        "assignee": None,
        "assignees": [],
        "milestone": None,
        "locked": False,
        "active_lock_reason": None,
        "comments": sum(1 for c in state.comments(repo.full_name) if c["issue_url"].endswith(f"/issues/{number}")),
        "closed_at": iso(closed) if closed else None,
        "created_at": iso(record.get("created_at")),
        "updated_at": iso(record.get("updated_at")),
        "author_association": "NONE",
    }


def add_comment(state: GitHubState, full_name: str, number: int, body: str, login: str = "octocat") -> JSON:
    """A comment written by user `login` on issue or pull request `number` (as a webhook would carry it)."""
    comment = comment_json(state, state.repos[full_name], number, state.new_id(), body)
    comment["user"] = user_json(state, login, state.new_id())
    comment["author_association"] = "MEMBER"
    state.issue_comments.setdefault(full_name, []).append(comment)
    return comment
