"""Checkouts: a fresh work tree of a commit of a mirror, written by libgit2's checkout, with its two git
directories laid out by hand; and the spare work tree each mirror keeps ready, which the next checkout
of the same commit takes by rename.

The tree may be hostile (a fork's commit). libgit2 refuses paths into `.git` or through `..`, names
that contain a slash, and writes through a symlink the checkout itself made; the private git
directory also sets core.protectNTFS and core.protectHFS, so the names Windows and macOS fold onto
`.git` (`git~1`, `.git.`, `.g\u200cit`) are refused too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import re
import secrets
import shutil
from pathlib import Path

import pygit2
from pygit2.enums import CheckoutStrategy

from app.core.errors import WorkspaceError
from app.git.layout import checkpoints_dir, private_gitdir
from app.git.remotes import repo_name
from app.git.workspace import Workspace


async def checkout(mirror: Path, base: str, dest: Path) -> Workspace:
    """A fresh work tree of `base` (branch, tag or commit id) of `mirror` at `dest`, which must not exist."""
    return await asyncio.to_thread(_checkout, mirror, base, dest)


def _checkout(mirror: Path, base: str, dest: Path) -> Workspace:
    repo = pygit2.Repository(str(mirror))
    name = _mirror_name(repo, mirror)
    commit, branch = _resolve_base(repo, base, name)
    gitdir = private_gitdir(dest)
    if dest.exists() and any(dest.iterdir()):
        raise WorkspaceError(f"workspace {dest} is not empty; give each run a new directory")
    if gitdir.exists():
        raise WorkspaceError(f"{gitdir} already exists; clean up the previous workspace at {dest} first")
    dest.mkdir(parents=True, exist_ok=True)
    objects = Path(repo.path).resolve() / "objects"
    _init_gitdir(dest / ".git", objects, {}, branch, str(commit.id))
    _init_gitdir(gitdir, objects, {"worktree": str(dest.resolve())}, None, str(commit.id))
    _borrow_checkpoints(dest, objects)
    (gitdir / "info" / "exclude").write_text("/.git\n")
    (gitdir / "routines-base").write_text(f"{commit.id}\n")
    try:
        private = pygit2.Repository(str(gitdir))
        private.checkout_tree(private[commit.id], strategy=CheckoutStrategy.FORCE)  # type: ignore[no-untyped-call]
        (dest / ".git" / "index").write_bytes((gitdir / "index").read_bytes())
    except (OSError, pygit2.GitError) as exc:
        Workspace(dest, "").cleanup()
        raise WorkspaceError(f"could not check out {base} of {name} into {dest}: {exc}") from None
    except BaseException:
        Workspace(dest, "").cleanup()
        raise
    return Workspace(dest, str(commit.id))


def _mirror_name(repo: pygit2.Repository, mirror: Path) -> str:
    origin = repo.remotes["origin"].url if "origin" in repo.remotes.names() else None
    return repo_name(origin) if origin else str(mirror)


def _borrow_checkpoints(dest: Path, mirror_objects: Path) -> None:
    """Let the private git directory read the mirror's objects and the run's checkpoints (made if missing)."""
    store = checkpoints_dir(dest) / "objects"
    for sub in ("info", "pack"):
        (store / sub).mkdir(parents=True, exist_ok=True)
    alternates = private_gitdir(dest) / "objects" / "info" / "alternates"
    alternates.write_text(f"{mirror_objects}\n{store.resolve()}\n")


def _resolve_base(repo: pygit2.Repository, base: str, name: str) -> tuple[pygit2.Commit, str | None]:
    for ref, branch in ((f"refs/heads/{base}", base), (f"refs/tags/{base}", None)):
        if ref in repo.references:
            return repo.references[ref].peel(pygit2.Commit), branch
    if re.fullmatch(r"[0-9a-f]{7,40}", base):
        with contextlib.suppress(KeyError, ValueError, pygit2.GitError):
            return repo.revparse_single(base).peel(pygit2.Commit), None
    branches = sorted(repo.branches.local)
    known = ", ".join(branches[:10]) + (" …" if len(branches) > 10 else "") if branches else "no branches"
    raise WorkspaceError(
        f"branch '{base}' does not exist in {name}; set `base:` to an existing branch (it has: {known})"
    )


def _init_gitdir(path: Path, objects: Path, core: dict[str, str], branch: str | None, oid: str) -> None:
    """Lay out a git directory by hand: faster than `git init`, and no template (hooks) is copied."""
    for sub in ("objects/info", "objects/pack", "refs/heads", "refs/tags", "info"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    (path / "objects" / "info" / "alternates").write_text(f"{objects}\n")
    _write_config(path, core)
    _write_head(path, branch, oid)


def _write_config(path: Path, core: dict[str, str]) -> None:
    settings = {"repositoryformatversion": "0", "filemode": "true", "bare": "false", "logallrefupdates": "true"}
    settings.update(protectNTFS="true", protectHFS="true")
    settings.update(core)
    (path / "config").write_text("[core]\n" + "".join(f"\t{k} = {v}\n" for k, v in settings.items()))


def _write_head(path: Path, branch: str | None, oid: str) -> None:
    """HEAD on `branch` at `oid`, or detached at `oid` when there is no branch."""
    if branch:
        ref = path / "refs" / "heads" / branch
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(f"{oid}\n")
    (path / "HEAD").write_text(f"ref: refs/heads/{branch}\n" if branch else f"{oid}\n")


def _spares_dir(mirror: Path) -> Path:
    return mirror.with_name(mirror.name + ".spares")


def claim_spare(mirror: Path, base: str, dest: Path) -> Workspace | None:
    """Move a ready spare of `base`'s commit to `dest` (atomically claimed by rename), or None."""
    repo = pygit2.Repository(str(mirror))
    commit, branch = _resolve_base(repo, base, _mirror_name(repo, mirror))
    if (dest.exists() and any(dest.iterdir())) or private_gitdir(dest).exists():
        return None
    spares = _spares_dir(mirror)
    for ready in spares.glob(f"{commit.id}-*") if spares.is_dir() else ():
        claimed = spares / f".claimed-{secrets.token_hex(4)}"
        try:
            ready.rename(claimed)
        except FileNotFoundError:
            continue
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            (claimed / "work").rename(dest)
            (claimed / "work.gitdir").rename(private_gitdir(dest))
        except OSError:
            shutil.rmtree(claimed, ignore_errors=True)
            return None
        shutil.rmtree(claimed, ignore_errors=True)  # what the spare kept beside its tree
        _write_config(private_gitdir(dest), {"worktree": str(dest.resolve())})
        _borrow_checkpoints(dest, Path(repo.path).resolve() / "objects")
        (dest / ".git" / "HEAD").unlink()
        _write_head(dest / ".git", branch, str(commit.id))
        return Workspace(dest, str(commit.id))
    return None


def make_spare(mirror: Path, commit: str) -> None:
    """Keep one spare work tree of `commit` for `mirror`; stale ones (other commits) are removed."""
    spares = _spares_dir(mirror)
    spares.mkdir(exist_ok=True)
    with open(spares / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        for entry in spares.iterdir():
            if entry.name.startswith(commit):
                return
            if entry.name != ".lock" and not entry.name.startswith(".claimed-"):
                shutil.rmtree(entry, ignore_errors=True)
        building = spares / f".building-{secrets.token_hex(4)}"
        _checkout(mirror, commit, building / "work")
        building.rename(spares / f"{commit}-{secrets.token_hex(4)}")
