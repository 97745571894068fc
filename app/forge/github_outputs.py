"""GitHub calls for the outputs other than a draft PR: reading a pull request, posting reviews, report issues.

Built on a GitHubForge by composition: its installation tokens (`credentials`), its connection
pool (`transport`) and its API URL. Answers are read as plain JSON (like webhook payloads), so a
field GitHub adds or drops does not break a run. Failures become ForgeError naming the fix; a
review refused because of its inline comments becomes CommentsRefused, so the caller can post
the comments in the body instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from githubkit import GitHub, UnauthAuthStrategy
from githubkit.exception import GitHubException, RequestFailed, RequestTimeout

from app.core.errors import CommentsRefused, ForgeError
from app.core.ports import Credentials, InlineComment, IssueRef, PullFile, PullInfo, RepoInfo
from app.forge.github import GitHubForge, error_body, split_repo
from app.forge.github_errors import describe_failure, redact

PER_PAGE = 100
MAX_FILE_PAGES = 30  # GitHub lists at most 3000 files of a pull request
MAX_ISSUE_PAGES = 10


class GitHubOutputs:
    """The `ForgeOutputs` of GitHub. Cheap to build; holds no resource of its own (the forge's pool is shared)."""

    def __init__(self, forge: GitHubForge) -> None:
        self.forge = forge
        self._github: GitHub[UnauthAuthStrategy] = GitHub(
            base_url=forge.api_url + "/",
            timeout=forge.timeout_s,
            http_cache=False,
            user_agent="routines",
            async_transport=forge.transport,
        )

    async def read_pull(self, repo: RepoInfo, number: int, creds: Credentials | None) -> PullInfo:
        """Pull request `number`: its head and base commits and the files it changes, with their patches."""
        owner, name = split_repo(repo.full_name)
        headers = await self._auth(repo, creds, "pull_requests", "read")
        rest = self._github.rest.pulls
        pull = await self._call(
            f"read pull request #{number}", repo, rest.async_get(owner, name, number, headers=headers)
        )
        files: list[PullFile] = []
        for page in range(1, MAX_FILE_PAGES + 1):
            listed = await self._call(
                f"list the files of pull request #{number}",
                repo,
                rest.async_list_files(owner, name, number, per_page=PER_PAGE, page=page, headers=headers),
            )
            files += [PullFile(str(f["filename"]), str(f.get("status") or ""), f.get("patch")) for f in listed]
            if len(listed) < PER_PAGE:
                break
        return PullInfo(
            number=int(pull["number"]),
            url=str(pull["html_url"]),
            head_ref=str(pull["head"]["ref"]),
            head_sha=str(pull["head"]["sha"]),
            base_ref=str(pull["base"]["ref"]),
            base_sha=str(pull["base"]["sha"]),
            files=tuple(files),
            from_fork=str((pull["head"].get("repo") or {}).get("full_name") or "").lower()
            != str(pull["base"]["repo"]["full_name"]).lower(),
        )

    async def post_review(
        self,
        repo: RepoInfo,
        number: int,
        *,
        commit_id: str,
        body: str,
        comments: Sequence[InlineComment],
        creds: Credentials | None,
    ) -> tuple[int, str]:
        """Post a COMMENT review on commit `commit_id`; CommentsRefused when GitHub refuses an inline comment."""
        owner, name = split_repo(repo.full_name)
        headers = await self._auth(repo, creds, "pull_requests", "write")
        request = self._github.rest.pulls.async_create_review(
            owner,
            name,
            number,
            commit_id=commit_id,
            body=body,
            event="COMMENT",
            comments=[_inline(c) for c in comments],
            headers=headers,
        )
        review = await self._call(f"review pull request #{number}", repo, request, refused_comments=bool(comments))
        return int(review["id"]), str(review.get("html_url") or "")

    async def find_issue(self, repo: RepoInfo, label: str, marker: str, creds: Credentials | None) -> IssueRef | None:
        """The open issue labelled `label` whose body holds `marker` (pull requests are skipped)."""
        owner, name = split_repo(repo.full_name)
        headers = await self._auth(repo, creds, "issues", "read")
        for page in range(1, MAX_ISSUE_PAGES + 1):
            listed = await self._call(
                f"list open issues labelled {label}",
                repo,
                self._github.rest.issues.async_list_for_repo(
                    owner, name, labels=label, state="open", per_page=PER_PAGE, page=page, headers=headers
                ),
            )
            for issue in listed:
                if "pull_request" not in issue and marker in (issue.get("body") or ""):
                    return IssueRef(int(issue["number"]), str(issue["html_url"]))
            if len(listed) < PER_PAGE:
                break
        return None

    async def create_issue(
        self, repo: RepoInfo, *, title: str, body: str, labels: Sequence[str], creds: Credentials | None
    ) -> IssueRef:
        """Open an issue; returns it with `created=True`."""
        owner, name = split_repo(repo.full_name)
        headers = await self._auth(repo, creds, "issues", "write")
        request = self._github.rest.issues.async_create(
            owner, name, title=title, body=body, labels=list(labels), headers=headers
        )
        issue = await self._call("open an issue", repo, request)
        return IssueRef(int(issue["number"]), str(issue["html_url"]), created=True)

    async def update_issue(
        self, repo: RepoInfo, number: int, *, title: str, body: str, creds: Credentials | None
    ) -> IssueRef:
        """Replace the title and body of issue `number`."""
        owner, name = split_repo(repo.full_name)
        headers = await self._auth(repo, creds, "issues", "write")
        request = self._github.rest.issues.async_update(owner, name, number, title=title, body=body, headers=headers)
        issue = await self._call(f"update issue #{number}", repo, request)
        return IssueRef(int(issue["number"]), str(issue["html_url"]))

    async def _auth(self, repo: RepoInfo, creds: Credentials | None, permission: str, level: str) -> dict[str, str]:
        if creds is None:
            creds = await self.forge.credentials(repo, {permission: level})
        return {"Authorization": f"token {creds.password}"}

    async def _call(self, action: str, repo: RepoInfo, request: Any, *, refused_comments: bool = False) -> Any:
        """Await a githubkit request and return its JSON body; failures become ForgeError (or CommentsRefused)."""
        where = repo.full_name
        try:
            response = await request
            return response.json()
        except RequestFailed as exc:
            status = exc.response.status_code
            message = describe_failure(action, where, status, error_body(exc))
            if refused_comments and status == 422:
                raise CommentsRefused(redact(f"{message}; an inline comment is not on a line of the diff")) from None
        except RequestTimeout:
            message = f"GitHub did not answer within {self.forge.timeout_s:g} s while trying to {action} on {where}"
            message += "; retry later"
        except (GitHubException, ValueError) as exc:
            message = (
                f"cannot {action} on {where}: GitHub at {self.forge.api_url} is unreachable or answered something "
                f"unexpected ({type(exc).__name__}); check GITHUB_API_URL and the network"
            )
        raise ForgeError(redact(message)) from None


def _inline(comment: InlineComment) -> dict[str, Any]:
    data: dict[str, Any] = {"path": comment.path, "line": comment.line, "side": comment.side, "body": comment.body}
    if comment.start_line is not None:
        data.update(start_line=comment.start_line, start_side=comment.side)
    return data
