"""Spare work trees: each mirror keeps checkouts ready beside it (one, or `ROUTINES_SPARES`), which the
next runs of the repository take by rename and, when their base moved since, bring forward by writing
only what changed.

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


BUSY = -1
"""What `keep_spare` returns when another thread or process keeps the mirror's spares just now."""


def keep_spare(mirror: Path, base: str | None = None, count: int = 1, *, at_most: int | None = None) -> int:
    """Keep `count` spares of `mirror` ready at the commit `base` names now: those there already are
    kept, those at another commit are advanced, more than `count` are dropped, and new ones are checked
    out until there are `count`. Without `base` (after a fetch) only existing spares are advanced, each
    to what its own base names now. At most `at_most` spares are advanced or checked out in one call;
    returns how many are left to advance or check out, or BUSY at once while another thread or process
    keeps this mirror's spares."""
    spares = spares_dir(mirror)
    spares.mkdir(exist_ok=True)
    with open(spares / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return BUSY
        _sweep(spares)
        repo = pygit2.Repository(str(mirror))
        name = mirror_name(repo, mirror)
        commits: dict[str, str | None] = {}

        def commit_of(follow: str) -> str | None:
            if follow not in commits:
                try:
                    commits[follow] = str(resolve_base(repo, follow, name)[0].id)
                except WorkspaceError:
                    if follow == base:
                        raise
                    commits[follow] = None  # the branch a spare followed is gone; the next run's checkout decides
            return commits[follow]

        budget = count if at_most is None else at_most
        kept = left = 0
        for spare, made_for in _ready(spares, prefer=commit_of(base) if base else None):
            follow = base or _followed(spare)  # the base of the latest run is what the next runs likely want
            commit = commit_of(follow) if follow else None
            if kept >= count:
                _drop(spare)
            elif commit is None or made_for == commit:
                kept += 1
            elif budget <= 0:
                kept, left = kept + 1, left + 1  # still claimable: the run that takes it advances it
            else:
                budget -= 1
                kept += _advance(spare, made_for, commit, follow or "")
        commit = commit_of(base) if base else None
        while commit is not None and kept < count and budget > 0:
            building = spares / f".building-{secrets.token_hex(4)}"
            check_out(mirror, commit, building / "work")
            remember_layout(private_gitdir(building / "work") / "index")  # so advancing it patches the index quickly
            (building / "base").write_text(base or "")
            building.rename(spares / f"{commit}-{secrets.token_hex(4)}")
            kept, budget = kept + 1, budget - 1
        return left + (count - kept if commit is not None else 0)


def _advance(spare: Path, made_for: str, commit: str, follow: str) -> bool:
    """Bring a ready spare to `commit` under another name (claimed by rename meanwhile, it is not ours)."""
    advancing = spare.with_name(f".advancing-{secrets.token_hex(4)}")
    try:
        spare.rename(advancing)
    except FileNotFoundError:
        return False  # a run claimed it meanwhile; its checkout makes the next spare
    if advance(advancing / "work", made_for, commit):
        (advancing / "base").write_text(follow)
        advancing.rename(spare.with_name(f"{commit}-{secrets.token_hex(4)}"))
        return True
    shutil.rmtree(advancing, ignore_errors=True)
    return False


def _drop(spare: Path) -> None:
    dropping = spare.with_name(f".claimed-{secrets.token_hex(4)}")
    try:
        spare.rename(dropping)
    except FileNotFoundError:
        return
    shutil.rmtree(dropping, ignore_errors=True)


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
