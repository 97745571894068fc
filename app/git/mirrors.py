"""Bare mirrors of repositories, one per URL, cloned once and fetched before each run; safe to share
between workers (a file lock per mirror).

Fetches coalesce: a run that asks while another fetch of the same mirror is under way is served by
the first fetch that began after it was fired (or, without that time, after it asked), and every run
waiting then is served by that one fetch (counted in the mirror's fetch log, so across processes
too): a burst of runs fired together costs about one fetch, not one per run in a row.

A mirror made over the network starts shallow, like `git clone --depth 1`: the remote's default
branch at depth 1, so the first run checks out as soon as a shallow clone would. The rest (every
branch and tag, the whole history) is fetched in the background once that checkout is written (so
the two do not compete), or at once when a checkout asks for what the shallow mirror lacks; a
process that fetches a mirror still shallow schedules that too. While a mirror is shallow, its
checkouts carry its shallow roots, so a push computes its pack without a missing parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pygit2
from pygit2.enums import FetchPrune

from app.core.errors import WorkspaceError
from app.core.ports import Credentials
from app.git.checkouts import checkout, has_base
from app.git.layout import fetch_log, mirror_lock, private_gitdir
from app.git.remotes import Callbacks, display_url, git_failure, is_local, locked, repo_name
from app.git.spares import BUSY, claim_spare, keep_spare, spares_dir
from app.git.workspace import Workspace

logger = logging.getLogger(__name__)

MIRROR_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
UNSHALLOW = 2**31 - 1  # libgit2's GIT_FETCH_DEPTH_UNSHALLOW
HISTORY_DELAY_S = 10.0
KEEPER_RETRIES, KEEPER_RETRY_S = 50, 0.1  # how long a keeper waits for another to let go of a mirror's spares


@dataclass(frozen=True)
class _History:
    """The fetch of a shallow mirror's history, waiting for `start`."""

    start: asyncio.Event
    task: asyncio.Task[None]


class Mirrors:
    """Bare mirrors of repositories under `root/mirrors`, one per URL, safe to share between workers.

    Each mirror keeps `spares` work trees ready (app.git.spares; 0: none): made in the background after
    a checkout (once `before_background()` allows: the runs that are starting go first), brought to the
    new commit of their branch in the background after each fetch, and taken by the next checkouts by
    rename, then advanced by the difference if their base moved again.
    """

    def __init__(
        self, root: Path, *, spares: int = 1, before_background: Callable[[], Awaitable[object]] | None = None
    ) -> None:
        self.root = root
        self.spares = spares
        self._before_background = before_background
        self._background: set[asyncio.Task[None]] = set()
        self._refreshing: dict[Path, asyncio.Task[None]] = {}
        self._histories: dict[Path, _History] = {}
        self._fetching: dict[Path, asyncio.Lock] = {}
        self._finished: dict[Path, tuple[int, float]] = {}  # each mirror's last fetch seen completed, when it began
        self._keeping: dict[Path, str | None] = {}  # the mirrors whose spares a keeper keeps, to which base
        self._stopping = False

    def path_for(self, url: str) -> Path:
        clean = display_url(url)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "+", "/".join(repo_name(url).split("/")[-2:])).strip("+.")
        digest = hashlib.sha256(clean.encode()).hexdigest()[:10]
        return self.root / "mirrors" / f"{slug or 'repo'}-{digest}.git"

    async def ensure(self, url: str, creds: Credentials | None = None, *, since: float | None = None) -> Path:
        """The mirror of `url`: cloned the first time (shallow, completed in the background) and fetched
        (heads and tags, pruned) afterwards by a fetch that began at or after `since` (wall-clock seconds:
        when the run was fired) or, without it, after this call; its spare work tree follows in the
        background."""
        if urlsplit(url).password:
            raise WorkspaceError(f"{display_url(url)} carries a password in the URL; pass it as Credentials instead")
        path = self.path_for(url)
        asked = _fetches(path)[0]
        async with self._fetching.setdefault(path, asyncio.Lock()):
            # a fetch this process began late enough and finished while it waited serves it at once: a
            # burst of runs on one worker then waits for one fetch, not for a thread each in turn
            if not _serves(self._finished.get(path), asked, since):
                self._finished[path] = await asyncio.to_thread(self._ensure, url, creds, asked=asked, since=since)
        if (path / "shallow").exists() and self._pending_history(path) is None:
            start = asyncio.Event()
            task = self._spawn(self._complete(path, url, creds, start), "could not fetch the history of %s", url)
            self._histories[path] = _History(start, task)
        elif self.spares and path not in self._refreshing and spares_dir(path).is_dir():
            task = self._spawn(self._refresh(path), "could not refresh the spare of %s", url)
            self._refreshing[path] = task
        return path

    async def _refresh(self, mirror: Path) -> None:
        """After a fetch: bring one spare to the new commit of its branch now (the next checkout waits for
        this), the others in the background, after the runs that are starting."""
        if await asyncio.to_thread(keep_spare, mirror, None, self.spares, at_most=1) > 0:
            self._spawn(self._keep(mirror, None), "could not refresh the spares of %s", str(mirror))

    def _ensure(
        self,
        url: str,
        creds: Credentials | None,
        *,
        asked: int | None = None,
        since: float | None = None,
        unshallow: bool = False,
    ) -> tuple[int, float]:
        """Clone or fetch the mirror of `url` under its lock; skipped when a fetch that started after the
        caller read `asked` (the fetches started then), or that began at or after `since`, has completed
        meanwhile, in any process (`asked` None: never skipped). Returns the number of the last fetch
        completed and when it began."""
        path = self.path_for(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked(mirror_lock(path)):
            started, finished, began = _fetches(path)
            if asked is not None and _serves((finished, began), asked, since) and (path / "HEAD").exists():
                return finished, began
            _record_fetches(path, started + 1, finished, began)
            beginning = time.time()
            if not (path / "HEAD").exists():
                self._clone(path, url, creds)
            else:
                repo = pygit2.Repository(str(path))
                if repo.remotes["origin"].url != url:
                    repo.remotes.set_url("origin", url)
                self._fetch(repo, url, creds, depth=UNSHALLOW if unshallow and (path / "shallow").exists() else 0)
            _record_fetches(path, started + 1, started + 1, beginning)
            return started + 1, beginning

    async def _complete(self, path: Path, url: str, creds: Credentials | None, start: asyncio.Event) -> None:
        """Fetch what the shallow clone left out (every branch and tag, the whole history) once `start`
        is set (by a checkout) or after HISTORY_DELAY_S, whichever comes first."""
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HISTORY_DELAY_S):
                    await start.wait()
            await asyncio.to_thread(self._ensure, url, creds, unshallow=True)
        finally:
            self._histories.pop(path, None)

    def _pending_history(self, path: Path) -> _History | None:
        history = self._histories.get(path)
        return history if history is not None and not history.task.done() else None

    def _clone(self, path: Path, url: str, creds: Credentials | None) -> None:
        staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            repo = pygit2.init_repository(str(staging), bare=True)
            remote = repo.remotes.create("origin", url, MIRROR_REFSPECS[0])
            repo.remotes.add_fetch("origin", MIRROR_REFSPECS[1])
            head = None if is_local(url) else self._default_branch(remote, url, creds)
            if head is None:
                self._fetch(repo, url, creds)
            else:
                self._fetch(repo, url, creds, refspecs=[f"+{head}:{head}"], depth=1)
                repo.set_head(head)
            staging.rename(path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _default_branch(self, remote: pygit2.Remote, url: str, creds: Credentials | None) -> str | None:
        """The branch the remote's HEAD names (refs/heads/…), or None (empty, or no HEAD advertised)."""
        try:
            heads = remote.list_heads(callbacks=Callbacks(url, creds))
        except pygit2.GitError as exc:
            raise git_failure("fetch", url, exc) from None
        target = next((head.symref_target for head in heads if head.name == "HEAD"), None)
        return target if target and target.startswith("refs/heads/") else None

    async def fetch_pull(self, mirror: Path, url: str, creds: Credentials | None, number: int, commit: str) -> None:
        """Make sure `mirror` has `commit`, the head of pull request `number`: when it does not (a fork's
        branch is not among the mirror's, or the head moved since the last fetch), fetch GitHub's
        `refs/pull/<n>/head` (which holds a fork's commits too) as `refs/routines/pull/<n>`. So a review
        checks out the commit it reviews, never a branch of the base repository that shares its name.
        WorkspaceError when the commit is still missing (the pull request was force-pushed since)."""
        await asyncio.to_thread(self._fetch_pull, mirror, url, creds, number, commit)

    def _fetch_pull(self, mirror: Path, url: str, creds: Credentials | None, number: int, commit: str) -> None:
        ref = f"refs/routines/pull/{int(number)}"
        with locked(mirror_lock(mirror)):
            repo = pygit2.Repository(str(mirror))
            if _has_commit(repo, commit):
                return
            self._fetch(repo, url, creds, refspecs=[f"+refs/pull/{int(number)}/head:{ref}"])
            if not _has_commit(repo, commit):
                raise WorkspaceError(
                    f"pull request #{number} of {display_url(url)} no longer has commit {commit} (force-pushed "
                    "since the run read it?); fire the review again"
                )

    async def checkout(self, mirror: Path, base: str, dest: Path) -> Workspace:
        """Like the module's `checkout`, served from the mirror's spare work tree when there is one (once
        a refresh of it that this process started is over)."""
        refreshing = self._refreshing.get(mirror)
        if refreshing is not None:
            await asyncio.wait([refreshing])
        history = self._pending_history(mirror)
        if history is not None and not await asyncio.to_thread(has_base, mirror, base):
            history.start.set()
            await asyncio.wait([history.task])
        try:
            workspace = await asyncio.to_thread(claim_spare, mirror, base, dest) if self.spares else None
            if workspace is None:
                workspace = await checkout(mirror, base, dest)
        finally:
            if history is not None:
                history.start.set()
        if self.spares:
            self._spawn(self._keep(mirror, base), "could not make a spare work tree of %s", base)
        return workspace

    async def _keep(self, mirror: Path, base: str | None) -> None:
        """Bring the mirror's spares to `count` at `base` (the base of the latest checkout; None: only
        advance them), one spare at a time, each after the runs that are starting (app.run.starts). One
        keeper per mirror in this process: a later call only hands it a newer base."""
        if mirror in self._keeping:
            self._keeping[mirror] = base or self._keeping[mirror]
            return
        self._keeping[mirror] = base
        busy = 0
        try:
            while not self._stopping:
                if self._before_background is not None:
                    await self._before_background()
                if self._stopping:
                    return
                left = await asyncio.to_thread(keep_spare, mirror, self._keeping[mirror], self.spares, at_most=1)
                if left == BUSY and busy < KEEPER_RETRIES:  # another thread or process keeps them just now
                    busy += 1
                    await asyncio.sleep(KEEPER_RETRY_S)
                elif left <= 0:
                    return
        finally:
            del self._keeping[mirror]

    def _spawn(self, work: Coroutine[Any, Any, None], failure: str, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._background.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._background.discard(task)
            for path, refreshing in list(self._refreshing.items()):
                if refreshing is task:
                    del self._refreshing[path]
            if not task.cancelled() and task.exception() is not None:
                logger.warning(failure + ": %s", display_url(name), task.exception())

        task.add_done_callback(done)
        return task

    def discard(self, dest: Path) -> None:
        """Remove what a dead worker left of a checkout at `dest`: after a crash the checkpoint is the truth."""
        if (private_gitdir(dest) / "routines-base").is_file():
            Workspace.open(dest).cleanup(keep_checkpoints=True)
        elif dest.exists():
            shutil.rmtree(dest, ignore_errors=True)

    async def settle(self, *, spares: bool = True) -> None:
        """Finish the work in the background: histories of shallow mirrors and, with `spares`, spare work
        trees (in a benchmark or a test; at shutdown only the spare being written is finished)."""
        self._stopping = not spares
        for history in self._histories.values():
            history.start.set()
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _fetch(
        self,
        repo: pygit2.Repository,
        url: str,
        creds: Credentials | None,
        *,
        refspecs: list[str] | None = None,
        depth: int = 0,
    ) -> None:
        try:
            repo.remotes["origin"].fetch(refspecs, callbacks=Callbacks(url, creds), prune=FetchPrune.PRUNE, depth=depth)
        except pygit2.GitError as exc:
            raise git_failure("fetch", url, exc) from None


def _fetches(mirror: Path) -> tuple[int, int, float]:
    """How many fetches of `mirror` have started, the number of the last one that completed, and when that
    one began (0 when unknown: a log written before it was kept)."""
    try:
        fields = fetch_log(mirror).read_text().split()
        return int(fields[0]), int(fields[1]), float(fields[2]) if len(fields) > 2 else 0.0
    except (OSError, ValueError, IndexError):
        return 0, 0, 0.0


def _record_fetches(mirror: Path, started: int, finished: int, began: float) -> None:
    """Replace the fetch log at once, so a reader without the lock never sees half of it."""
    staging = fetch_log(mirror).with_name(f".{fetch_log(mirror).name}.{secrets.token_hex(4)}")
    staging.write_text(f"{started} {finished} {began!r}\n")
    staging.replace(fetch_log(mirror))


def _serves(fetch: tuple[int, float] | None, asked: int, since: float | None) -> bool:
    """Whether the completed fetch `(number, when it began)` serves a caller that read `asked` fetches started
    when it asked, and needs one that began at or after `since` if that is given."""
    if fetch is None or fetch[0] == 0:
        return False
    number, began = fetch
    return number > asked or (since is not None and began > 0 and began >= since)


def _has_commit(repo: pygit2.Repository, commit: str) -> bool:
    try:
        return isinstance(repo[commit].peel(pygit2.Commit), pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError):
        return False
