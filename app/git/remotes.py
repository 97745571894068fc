"""Talking to git remotes with libgit2: credentials handed over once, URLs shown without secrets, locks."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pygit2

from app.core.errors import WorkspaceError
from app.core.ports import Credentials


def display_url(url: str) -> str:
    """`url` without user name or password: the only form that may reach a log or a message."""
    parts = urlsplit(url)
    if parts.scheme and parts.netloc and "@" in parts.netloc:
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return url


def repo_name(url: str) -> str:
    """How messages name a repository: `owner/name` for a URL, the path for a local repository."""
    if is_local(url):
        return url.removeprefix("file://")
    path = urlsplit(display_url(url)).path.strip("/").removesuffix(".git")
    return path or display_url(url)


def is_local(url: str) -> bool:
    return url.startswith(("/", "file://"))


class Callbacks(pygit2.RemoteCallbacks):
    """Hands libgit2 the credentials once (it would retry a refused token many times) and collects refusals."""

    # No progress reports: libgit2 makes two per object received, and calling into Python for each
    # took longer than the rest of a 50,000-file clone. pygit2 skips a hook that is set to None.
    transfer_progress = None  # type: ignore[assignment]

    def __init__(self, url: str, creds: Credentials | None) -> None:
        super().__init__()
        self._url = display_url(url)
        self._creds = creds
        self._asked = 0
        self.rejected: list[str] = []

    def credentials(self, url: str, username_from_url: str | None, allowed_types: int) -> pygit2.UserPass:
        self._asked += 1
        if self._creds is None:
            raise WorkspaceError(
                f"the git server at {self._url} asks for credentials and none were given; "
                "check that the forge hands out a token for this repository"
            )
        if self._asked > 1:
            raise WorkspaceError(
                f"the git server refused the credentials for {self._url}; the token may have expired "
                "or lack access to this repository: check the app installation and the routine's permissions"
            )
        return pygit2.UserPass(self._creds.username, self._creds.password)

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message:
            self.rejected.append(f"{refname}: {message}")


def git_failure(action: str, url: str, exc: Exception) -> WorkspaceError:
    text = str(exc).replace(url, display_url(url))
    return WorkspaceError(f"could not {action} {display_url(url)}: {text}")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock shared by every process (and machine) that sees `path`."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
