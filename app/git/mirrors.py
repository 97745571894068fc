"""Bare mirrors of repositories, one per URL, cloned once and fetched before each run; safe to share
between workers (a file lock per mirror)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pygit2
from pygit2.enums import FetchPrune

from app.core.errors import WorkspaceError
from app.core.ports import Credentials
from app.git.checkouts import checkout, claim_spare, make_spare
from app.git.layout import private_gitdir
from app.git.remotes import Callbacks, display_url, git_failure, locked, repo_name
from app.git.workspace import Workspace

logger = logging.getLogger(__name__)

MIRROR_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")


class Mirrors:
    """Bare mirrors of repositories under `root/mirrors`, one per URL, safe to share between workers.

    With `spares`, each mirror keeps one work tree ready (made in the background after a checkout)
    that the next `checkout` of the same commit takes by renaming it: O(1) instead of writing every file.
    """

    def __init__(self, root: Path, *, spares: bool = True) -> None:
        self.root = root
        self.spares = spares
        self._refills: set[asyncio.Task[None]] = set()

    def path_for(self, url: str) -> Path:
        clean = display_url(url)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "+", "/".join(repo_name(url).split("/")[-2:])).strip("+.")
        digest = hashlib.sha256(clean.encode()).hexdigest()[:10]
        return self.root / "mirrors" / f"{slug or 'repo'}-{digest}.git"

    async def ensure(self, url: str, creds: Credentials | None = None) -> Path:
        """The mirror of `url`, cloned the first time and fetched (heads and tags, pruned) afterwards."""
        if urlsplit(url).password:
            raise WorkspaceError(f"{display_url(url)} carries a password in the URL; pass it as Credentials instead")
        return await asyncio.to_thread(self._ensure, url, creds)

    def _ensure(self, url: str, creds: Credentials | None) -> Path:
        path = self.path_for(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked(path.with_suffix(".lock")):
            if (path / "HEAD").exists():
                repo = pygit2.Repository(str(path))
                if repo.remotes["origin"].url != url:
                    repo.remotes.set_url("origin", url)
                self._fetch(repo, url, creds)
            else:
                self._clone(path, url, creds)
        return path

    def _clone(self, path: Path, url: str, creds: Credentials | None) -> None:
        staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            repo = pygit2.init_repository(str(staging), bare=True)
            repo.remotes.create("origin", url, MIRROR_REFSPECS[0])
            repo.remotes.add_fetch("origin", MIRROR_REFSPECS[1])
            self._fetch(repo, url, creds)
            staging.rename(path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def checkout(self, mirror: Path, base: str, dest: Path) -> Workspace:
        """Like the module's `checkout`, served from the mirror's spare work tree when it has `base`'s commit."""
        workspace = await asyncio.to_thread(claim_spare, mirror, base, dest) if self.spares else None
        if workspace is None:
            workspace = await checkout(mirror, base, dest)
        if self.spares:
            task = asyncio.create_task(asyncio.to_thread(make_spare, mirror, workspace.base_commit))
            self._refills.add(task)
            task.add_done_callback(self._refilled)
        return workspace

    def _refilled(self, task: asyncio.Task[None]) -> None:
        self._refills.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("could not make a spare work tree: %s", task.exception())

    def discard(self, dest: Path) -> None:
        """Remove what a dead worker left of a checkout at `dest`: after a crash the checkpoint is the truth."""
        if (private_gitdir(dest) / "routines-base").is_file():
            Workspace.open(dest).cleanup(keep_checkpoints=True)
        elif dest.exists():
            shutil.rmtree(dest, ignore_errors=True)

    async def settle(self) -> None:
        """Wait until the spare work trees being made are ready (before shutdown, or in a benchmark)."""
        await asyncio.gather(*self._refills, return_exceptions=True)

    def _fetch(self, repo: pygit2.Repository, url: str, creds: Credentials | None) -> None:
        try:
            repo.remotes["origin"].fetch(callbacks=Callbacks(url, creds), prune=FetchPrune.PRUNE)
        except pygit2.GitError as exc:
            raise git_failure("fetch", url, exc) from None
