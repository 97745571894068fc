"""The local forge: `repo:` is the path of a git repository on this machine, and no pull request is opened.

A run's work is left as the branch `routines/<routine>/<run>` in that repository, pushed there by
`Workspace.push` with the repository's path as the URL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pygit2

from app.core.domain import PullRequest
from app.core.errors import ForgeError
from app.core.ports import Credentials, RepoInfo


class LocalForge:
    """Repositories given as paths: absolute, or relative to `root` (the current directory by default)."""

    name = "local"

    def __init__(self, root: Path | None = None) -> None:
        self.root = root

    async def resolve(self, repo: str) -> RepoInfo:
        """The repository at path `repo`; its default branch is the branch its HEAD names."""
        return await asyncio.to_thread(self._resolve, repo)

    def _resolve(self, repo: str) -> RepoInfo:
        path = Path(repo).expanduser()
        if not path.is_absolute():
            path = (self.root or Path.cwd()) / path
        path = path.resolve()
        try:
            found = pygit2.Repository(str(path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        except pygit2.GitError:
            raise ForgeError(
                f"repo: {repo!r} is not a git repository ({path}); in local mode `repo:` is the path of a "
                "git repository on this machine (create one with `git init`)"
            ) from None
        head = found.references["HEAD"].raw_target
        if not isinstance(head, bytes) or not head.startswith(b"refs/heads/"):
            raise ForgeError(
                f"{path} has a detached HEAD, so it has no default branch; check out a branch there or set `base:`"
            )
        if found.head_is_unborn:
            raise ForgeError(f"{path} has no commits yet; commit something on {head.decode()[11:]} first")
        return RepoInfo(
            full_name=str(path),
            clone_url=str(path),
            default_branch=head.decode()[len("refs/heads/") :],
            html_url=path.as_uri(),
        )

    async def credentials(self, repo: RepoInfo, permissions: dict[str, str]) -> Credentials | None:
        """Local repositories need none."""
        return None

    async def find_pull_request(self, repo: RepoInfo, head: str, creds: Credentials | None) -> PullRequest | None:
        """Local mode has no pull requests."""
        return None

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
        """Always refused: in local mode the run's work stays on its branch."""
        raise ForgeError(
            f"local mode opens no pull requests: the work is on branch {head} of {repo.full_name}; "
            f"review it with `git log {base}..{head}` and merge it yourself"
        )
