"""Checkouts: a fresh work tree of a commit of a mirror, written by libgit2's checkout, with its two git
directories laid out by hand (app.git.spares keeps one ready per mirror and brings it up to date).

The tree may be hostile (a fork's commit). libgit2 refuses paths into `.git` or through `..`, names
that contain a slash, and writes through a symlink the checkout itself made; the private git
directory also sets core.protectNTFS and core.protectHFS, so the names Windows and macOS fold onto
`.git` (`git~1`, `.git.`, `.g\u200cit`) are refused too.

A tree without submodules is written with the private git directory opened bare and the work tree
given as the checkout's target: libgit2 then reads `.gitattributes` from the index being checked out,
as git does, instead of resolving every file's folder on disk (a `realpath` per file, about a third
of the time on a 50,000-file tree). Submodules need the work tree open, so a tree with a gitlink is
written that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pygit2
from pygit2.enums import CheckoutStrategy, RepositoryOpenFlag

from app.core.errors import WorkspaceError
from app.git.indexes import index_entry, join_indexes, patch_index
from app.git.layout import checkpoints_dir, mirror_lock, private_gitdir
from app.git.remotes import locked, repo_name
from app.git.trees import Changes, changes, has_gitlinks, split
from app.git.updates import update_tree
from app.git.workspace import Workspace

logger = logging.getLogger(__name__)

OPEN_BARE = RepositoryOpenFlag.NO_SEARCH | RepositoryOpenFlag.BARE
_FOLDER = 0o040000
_EOL_SETTINGS = ("core.autocrlf", "core.eol")
MAX_WRITER_DEPTH = 64  # deeper paths are rare and left to libgit2, so the writer holds few descriptors
PATH_MAX = 4096
PARALLEL_BYTES = 160_000  # trees this big (about 4,000 files) are written quicker by two writers than one


async def checkout(mirror: Path, base: str, dest: Path) -> Workspace:
    """A fresh work tree of `base` (branch, tag or commit id) of `mirror` at `dest`, which must not exist."""
    return await asyncio.to_thread(check_out, mirror, base, dest)


def check_out(mirror: Path, base: str, dest: Path) -> Workspace:
    """`checkout`, in the calling thread."""
    repo, commit, branch = resolve(mirror, base)
    name = mirror_name(repo, mirror)
    gitdir = private_gitdir(dest)
    if dest.exists() and any(dest.iterdir()):
        raise WorkspaceError(f"workspace {dest} is not empty; give each run a new directory")
    if gitdir.exists():
        raise WorkspaceError(f"{gitdir} already exists; clean up the previous workspace at {dest} first")
    dest.mkdir(parents=True, exist_ok=True)
    objects = Path(repo.path).resolve() / "objects"
    try:
        _init_gitdir(dest / ".git", objects, {}, None, str(commit.id))
        _init_gitdir(gitdir, objects, {"worktree": str(dest.resolve())}, None, str(commit.id))
        (gitdir / "info" / "exclude").write_text("/.git\n")
        _write_tree(gitdir, dest, objects, str(commit.id))
        return attach(mirror, dest, branch, str(commit.id))
    except (OSError, pygit2.GitError) as exc:
        Workspace(dest, "").cleanup()
        raise WorkspaceError(f"could not check out {base} of {name} into {dest}: {exc}") from None
    except BaseException:
        Workspace(dest, "").cleanup()
        raise


def _write_tree(gitdir: Path, dest: Path, objects: Path, commit: str) -> None:
    """Write `commit`'s tree into the empty `dest`, and the index of `gitdir` with each file's stat data.
    A big tree is written by two checkouts at once, each limited to half of its files (libgit2 writes
    with one thread; a machine has more), each with its own index, then joined."""
    repo = pygit2.Repository(str(gitdir), OPEN_BARE)
    tree = str(repo[commit].peel(pygit2.Tree).id)
    groups = split(repo.odb, tree, 2, PARALLEL_BYTES)
    if groups is None and has_gitlinks(repo.odb, tree):
        repo = pygit2.Repository(str(gitdir), RepositoryOpenFlag.NO_SEARCH)
        repo.checkout_tree(repo[tree], strategy=CheckoutStrategy.FORCE)  # type: ignore[no-untyped-call]
        return
    if groups is None or len(groups) < 2:
        _write_part(gitdir, dest, tree, None)
        return
    helper = gitdir / "routines-writer"
    _init_gitdir(helper, objects, {}, None, commit)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(_write_part, [gitdir, helper], [dest, dest], [tree, tree], groups))
        join_indexes(gitdir / "index", helper / "index", groups[1])
    finally:
        shutil.rmtree(helper, ignore_errors=True)


def _write_part(gitdir: Path, dest: Path, tree: str, paths: list[str] | None) -> None:
    """Write the files of `tree` under `paths` (all without) into `dest`, and the index of `gitdir`: every
    entry of the tree, with stat data for the files written."""
    repo = pygit2.Repository(str(gitdir), OPEN_BARE)
    repo.index.read_tree(repo[tree])
    strategy = CheckoutStrategy.FORCE | CheckoutStrategy.NO_REFRESH | CheckoutStrategy.DISABLE_PATHSPEC_MATCH
    repo.checkout_tree(repo[tree], strategy=strategy, directory=str(dest), paths=paths)  # type: ignore[no-untyped-call]


def advance(dest: Path, old: str, new: str) -> bool:
    """Bring the work tree at `dest`, checked out at commit `old` by `check_out` and untouched since (a
    spare), to commit `new` by writing only the paths that differ: by `app.git.updates` through folder
    descriptors with the index patched for what it wrote, or, where something converts what is
    written (a `.gitattributes`, a gitlink, an end-of-line setting), by libgit2's checkout limited to
    those paths with `old` as its baseline (HEAD), so files that went are removed. False when the trees
    fail the checks of `app.git.trees.changes` or a writer refuses; the work tree is then in no known
    state and must be removed (a full checkout refuses a hostile tree with its usual message)."""
    gitdir = private_gitdir(dest)
    try:
        repo = pygit2.Repository(str(gitdir), OPEN_BARE)
        target = repo[new].peel(pygit2.Tree)
        found = changes(repo.odb, str(repo[old].peel(pygit2.Tree).id), str(target.id))
        if found.paths and not (found.sensitive or found.filtered or _unusual(dest, found) or _converts(repo)):
            written = update_tree(dest, repo.odb, found.entries)
            removed = [  # a file or link written over another replaces its entry without help
                (path, was[0] == _FOLDER)
                for path, was, now in found.entries
                if was and (now is None or _FOLDER in (was[0], now[0]))
            ]
            entries = [(w.path, index_entry(w.path, w.mode, w.oid, w.stat)) for w in written]
            patch_index(gitdir / "index", removed, entries)
            logger.debug("brought %s forward by %d entries, written by folder descriptors", dest, len(found.entries))
        elif found.paths:
            logger.debug("brought %s forward by %d paths, written by libgit2", dest, len(found.paths))
            _write_config(gitdir, {"worktree": str(dest.resolve())})
            _write_head(gitdir, None, old)
            strategy = CheckoutStrategy.FORCE | CheckoutStrategy.DISABLE_PATHSPEC_MATCH
            if found.sensitive:
                repo = pygit2.Repository(str(gitdir), RepositoryOpenFlag.NO_SEARCH)
                repo.checkout_tree(repo[target.id], strategy=strategy, paths=found.paths)  # type: ignore[no-untyped-call]
            else:
                repo.checkout_tree(target, strategy=strategy, paths=found.paths, directory=str(dest))  # type: ignore[no-untyped-call]
        _write_head(gitdir, None, new)
    except (OSError, KeyError, ValueError, RecursionError, pygit2.GitError, WorkspaceError) as exc:
        logger.info("could not bring the work tree at %s from %s to %s: %s", dest, old, new, exc)
        return False
    return True


def _unusual(dest: Path, found: Changes) -> bool:
    """Whether a path written is one libgit2 must judge as a fresh checkout would: a name with `\\` or `~`
    (core.protectNTFS refuses `.git\\…` and `.gitmodules`' short names), nested deeper than
    MAX_WRITER_DEPTH, or too long for the system."""
    room = PATH_MAX - len(os.fsencode(dest)) - 1
    return any(
        len(path) >= room or path.count(b"/") >= MAX_WRITER_DEPTH or b"\\" in path or b"~" in path
        for path, _, new in found.entries
        if new is not None
    )


def _converts(repo: pygit2.Repository) -> bool:
    """Whether the configuration or attributes libgit2 reads besides the tree's (the system's and the
    user's too) could change what is written: line endings, attribute files, symlinks written as files."""
    config = repo.config
    if any(name in config and str(config[name]).lower() not in ("false", "lf") for name in _EOL_SETTINGS):
        return True
    if "core.attributesFile" in config or ("core.symlinks" in config and not config.get_bool("core.symlinks")):
        return True
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.exists(os.path.join(xdg, "git", "attributes"))


def attach(mirror: Path, dest: Path, branch: str | None, commit: str) -> Workspace:
    """Make the work tree at `dest`, whose private git directory is at `commit`, a run's: the agent's HEAD
    on `branch` (detached without one) and its index, the checkpoint store, and the mirror's shallow
    roots while it has them (so libgit2 and git stop there instead of missing a parent)."""
    gitdir = private_gitdir(dest)
    objects = mirror.resolve() / "objects"
    _write_config(gitdir, {"worktree": str(dest.resolve())})
    _write_head(gitdir, None, commit)
    _borrow_checkpoints(dest, objects)
    (dest / ".git" / "HEAD").unlink(missing_ok=True)
    _write_head(dest / ".git", branch, commit)
    (gitdir / "routines-base").write_text(f"{commit}\n")
    (dest / ".git" / "index").write_bytes((gitdir / "index").read_bytes())
    shallow = mirror / "shallow"
    for git in (gitdir, dest / ".git"):
        if shallow.is_file():
            shutil.copyfile(shallow, git / "shallow")
        else:
            (git / "shallow").unlink(missing_ok=True)
    return Workspace(dest, commit)


def mirror_name(repo: pygit2.Repository, mirror: Path) -> str:
    origin = repo.remotes["origin"].url if "origin" in repo.remotes.names() else None
    return repo_name(origin) if origin else str(mirror)


def _borrow_checkpoints(dest: Path, mirror_objects: Path) -> None:
    """Let the private git directory read the mirror's objects and the run's checkpoints (made if missing)."""
    store = checkpoints_dir(dest) / "objects"
    for sub in ("info", "pack"):
        (store / sub).mkdir(parents=True, exist_ok=True)
    alternates = private_gitdir(dest) / "objects" / "info" / "alternates"
    alternates.write_text(f"{mirror_objects}\n{store.resolve()}\n")


def resolve(mirror: Path, base: str) -> tuple[pygit2.Repository, pygit2.Commit, str | None]:
    """The mirror, `base`'s commit in it and its branch (None for a tag or a commit id). A mirror still
    shallow may lack `base` until its history has arrived: then this waits for that fetch and looks again."""
    repo = pygit2.Repository(str(mirror))
    try:
        return repo, *resolve_base(repo, base, mirror_name(repo, mirror))
    except WorkspaceError:
        if not (mirror / "shallow").exists():
            raise
    with locked(mirror_lock(mirror)):
        repo = pygit2.Repository(str(mirror))
    return repo, *resolve_base(repo, base, mirror_name(repo, mirror))


def has_base(mirror: Path, base: str) -> bool:
    repo = pygit2.Repository(str(mirror))
    try:
        resolve_base(repo, base, mirror_name(repo, mirror))
    except WorkspaceError:
        return False
    return True


def resolve_base(repo: pygit2.Repository, base: str, name: str) -> tuple[pygit2.Commit, str | None]:
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
