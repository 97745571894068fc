"""App-level GitHub calls: webhook deliveries (list, redeliver) and acknowledging events (reactions, comments).

Built on a GitHubForge by composition: its JWT (`app_jwt`), its installation tokens
(`credentials`) and its connection pool (`transport`). Answers stay plain JSON: delivery
listings are read as dicts, like webhook payloads. Failures become ForgeError naming the fix.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from app.core.domain import JSON
from app.core.errors import ForgeError
from app.core.ports import RepoInfo
from app.forge.github import GitHubForge
from app.forge.github_errors import describe_failure, redact

_NEXT_CURSOR = re.compile(r'<[^>]*[?&]cursor=([^&>]+)[^>]*>;\s*rel="next"')
API_VERSION = "2022-11-28"


class GitHubApp:
    """The App's own endpoints over `forge`; cheap to build, holds no resource of its own."""

    def __init__(self, forge: GitHubForge) -> None:
        self.forge = forge

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=self.forge.transport,
            base_url=self.forge.api_url,
            timeout=self.forge.timeout_s,
            headers={
                "accept": "application/vnd.github+json",
                "x-github-api-version": API_VERSION,
                "user-agent": "routines",
            },
        )

    async def _request(self, action: str, where: str, method: str, path: str, token: str, **kwargs: Any) -> Any:
        scheme = "Bearer" if token.count(".") == 2 else "token"
        try:
            async with self._client() as client:
                response = await client.request(method, path, headers={"authorization": f"{scheme} {token}"}, **kwargs)
        except httpx.TimeoutException:
            raise ForgeError(f"GitHub did not answer in time when trying to {action} on {where}; retry later") from None
        except httpx.HTTPError as exc:
            raise ForgeError(
                f"cannot {action} on {where}: GitHub at {self.forge.api_url} is unreachable ({type(exc).__name__}); "
                "check GITHUB_API_URL and the network"
            ) from None
        if response.status_code >= 400:
            body = _json(response)
            message = describe_failure(action, where, response.status_code, body if isinstance(body, dict) else {})
            raise ForgeError(redact(message))
        return _json(response) if response.content else None

    async def list_deliveries(self, cursor: str | None = None, per_page: int = 100) -> tuple[list[JSON], str | None]:
        """One page of the App's webhook deliveries, newest first, and the cursor of the next page (or None)."""
        params: dict[str, Any] = {"per_page": per_page, **({"cursor": cursor} if cursor else {})}
        try:
            async with self._client() as client:
                response = await client.get(
                    "/app/hook/deliveries", params=params, headers={"authorization": f"Bearer {self.forge.app_jwt()}"}
                )
        except httpx.HTTPError as exc:
            raise ForgeError(
                f"cannot list the App's webhook deliveries: GitHub is unreachable ({type(exc).__name__}); retry later"
            ) from None
        if response.status_code >= 400:
            body = _json(response)
            said = body.get("message") if isinstance(body, dict) else None
            raise ForgeError(
                redact(
                    f"GitHub refused to list the App's webhook deliveries ({response.status_code}: "
                    f"{said}); check GITHUB_APP_ID and the App key"
                )
            )
        items = _json(response)
        found = _NEXT_CURSOR.search(response.headers.get("link", ""))
        return (items if isinstance(items, list) else []), (found.group(1) if found else None)

    async def redeliver(self, delivery_id: int) -> None:
        """Ask GitHub to send delivery `delivery_id` again (a new attempt with the same GUID)."""
        path = f"/app/hook/deliveries/{delivery_id}/attempts"
        await self._request("redeliver a webhook", f"delivery {delivery_id}", "POST", path, self.forge.app_jwt())

    async def token(self, installation_id: int, repo: str, permissions: dict[str, str]) -> str:
        """An installation token for `repo` only, with `permissions`."""
        info = RepoInfo(full_name=repo, clone_url="", default_branch="", installation_id=installation_id)
        return (await self.forge.credentials(info, permissions)).password

    async def pull_files(self, repo: str, number: int, token: str) -> list[str]:
        """The names of the files pull request `number` changes (GitHub lists at most 3000)."""
        names: list[str] = []
        for page in range(1, 31):
            listed = await self._request(
                f"list the files of pull request #{number}",
                repo,
                "GET",
                f"/repos/{repo}/pulls/{number}/files",
                token,
                params={"per_page": 100, "page": page},
            )
            names += [str(f["filename"]) for f in listed or []]
            names += [str(f["previous_filename"]) for f in listed or [] if f.get("previous_filename")]
            if len(listed or []) < 100:
                break
        return names

    async def permission(self, repo: str, login: str, token: str) -> str:
        """`login`'s role on `repo`: admin, maintain, write, triage, read or none (a custom role counts as the
        base permission GitHub reports for it)."""
        if not _LOGIN.fullmatch(login):
            return "none"
        found = await self._request(
            f"read the permission of {login}", repo, "GET", f"/repos/{repo}/collaborators/{login}/permission", token
        )
        role, legacy = str((found or {}).get("role_name") or ""), str((found or {}).get("permission") or "none")
        return role if role in ("admin", "maintain", "write", "triage", "read") else legacy

    async def react(self, repo: str, path: str, token: str, content: str = "eyes") -> None:
        """React with `content` to `path` in the repository: `issues/12`, `issues/comments/5`, `pulls/comments/7`."""
        await self._request(
            f"react to {path}", repo, "POST", f"/repos/{repo}/{path}/reactions", token, json={"content": content}
        )

    async def comment(self, repo: str, number: int, body: str, token: str) -> int:
        """Comment on issue or pull request `number`; returns the comment id."""
        created = await self._request(
            f"comment on #{number}", repo, "POST", f"/repos/{repo}/issues/{number}/comments", token, json={"body": body}
        )
        return int(created["id"])

    async def update_comment(self, repo: str, comment_id: int, body: str, token: str) -> None:
        """Replace the body of issue comment `comment_id`."""
        path = f"/repos/{repo}/issues/comments/{comment_id}"
        await self._request(f"update comment {comment_id}", repo, "PATCH", path, token, json={"body": body})


_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})(?:\[bot\])?")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
