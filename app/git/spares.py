"""Spare work trees: each mirror keeps one checkout ready beside it, which the next run of the repository
takes by rename and, when its base moved since, brings forward by writing only what changed.

A spare lives in `<mirror>.spares/<commit>-<token>/`: the work tree `work`, its private git directory
`work.gitdir`, and `base`, the branch or tag it follows. Renaming it away claims it, so exactly one
run (or one refresh) gets it and no other ever sees it. Only trees that `check_out` wrote and no run
has touched are advanced, so libgit2's baseline is exactly what is on disk.
"""

from __future__ import annotations

import fcntl
import logging
import re
import secrets
import shutil
import time
from pathlib import Path

import pygit2

from app.core.errors import WorkspaceError
from app.git.checkouts import advance, attach, check_out, mirror_name, resolve, resolve_base
from app.git.indexes import remember_layout
from app.git.layout import private_gitdir
from app.git.workspace import Workspace

logger = logging.getLogger(__name__)
_READY = re.compile(r"([0-9a-f]{40,64})-[0-9a-f]{8}")
_LEFTOVERS = (".building-", ".advancing-")
_STALE_CLAIM_S = 600.0


def spares_dir(mirror: Path) -> Path:
    return mirror.with_name(mirror.name + ".spares")


def claim_spare(mirror: Path, base: str, dest: Path) -> Workspace | None:
    """Move a ready spare to `dest` (claimed by rename) and bring it to `base`'s commit, or None when
    there is none or it cannot be brought there (nothing is left at `dest` then)."""
    _, commit, branch = resolve(mirror, base)
    if (dest.exists() and any(dest.iterdir())) or private_gitdir(dest).exists():
        return None
    for spare, made_for in _ready(spares_dir(mirror), prefer=str(commit.id)):
        claimed = spare.with_name(f".claimed-{secrets.token_hex(4)}")
        try:
            spare.rename(claimed)
        except FileNotFoundError:
            continue
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            (claimed / "work").rename(dest)
        except OSError:
            shutil.rmtree(claimed, ignore_errors=True)
            return None
        try:
            (claimed / "work.gitdir").rename(private_gitdir(dest))
            if made_for != str(commit.id) and not advance(dest, made_for, str(commit.id)):
                Workspace(dest, "").cleanup()
                return None
            return attach(mirror, dest, branch, str(commit.id))
        except Exception:  # whatever went wrong, the run checks out afresh and nothing is left at dest
            logger.warning("could not take the spare of %s for %s", mirror, dest, exc_info=True)
            Workspace(dest, "").cleanup()
            return None
        finally:
            shutil.rmtree(claimed, ignore_errors=True)  # what the spare kept beside its tree
    return None


def keep_spare(mirror: Path, base: str | None = None) -> None:
    """Keep one spare of `mirror` at the commit `base` names now: one there already is kept, one at
    another commit is advanced, and without any a new one is checked out. Without `base` (after a
    fetch) only an existing spare is advanced, to what its own base names now. Returns at once while
    another thread or process keeps this mirror's spare."""
    spares = spares_dir(mirror)
    spares.mkdir(exist_ok=True)
    with open(spares / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        _sweep(spares)
        ready = _ready(spares)
        follow = base or (_followed(ready[0][0]) if ready else None)
        if follow is None:
            return
        repo = pygit2.Repository(str(mirror))
        try:
            commit = str(resolve_base(repo, follow, mirror_name(repo, mirror))[0].id)
        except WorkspaceError:
            if base is not None:
                raise
            return  # the branch the spare followed is gone; the next run's checkout decides
        if any(made_for == commit for _, made_for in ready):
            return
        target = spares / f"{commit}-{secrets.token_hex(4)}"
        if ready:
            spare, made_for = ready[0]
            advancing = spares / f".advancing-{secrets.token_hex(4)}"
            try:
                spare.rename(advancing)
            except FileNotFoundError:
                return  # a run claimed it meanwhile; its checkout makes the next spare
            if advance(advancing / "work", made_for, commit):
                (advancing / "base").write_text(follow)
                advancing.rename(target)
                return
            shutil.rmtree(advancing, ignore_errors=True)
        if base is not None:
            building = spares / f".building-{secrets.token_hex(4)}"
            check_out(mirror, commit, building / "work")
            remember_layout(private_gitdir(building / "work") / "index")  # so advancing it patches the index quickly
            (building / "base").write_text(follow)
            building.rename(target)


def _ready(spares: Path, prefer: str | None = None) -> list[tuple[Path, str]]:
    """The ready spares and the commit each was made for; those of `prefer` first."""
    if not spares.is_dir():
        return []
    found = [(entry, match[1]) for entry in spares.iterdir() if (match := _READY.fullmatch(entry.name))]
    return sorted(found, key=lambda spare: spare[1] != prefer)


def _followed(spare: Path) -> str | None:
    try:
        return (spare / "base").read_text() or None
    except OSError:
        return None


def _sweep(spares: Path) -> None:
    """Remove what a keeper that died left (only the lock holder keeps), and claims left for minutes."""
    for entry in spares.iterdir():
        stale = entry.name.startswith(_LEFTOVERS)
        if entry.name.startswith(".claimed-"):
            try:
                stale = time.time() - entry.lstat().st_ctime > _STALE_CLAIM_S
            except OSError:
                continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
