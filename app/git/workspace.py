"""One run's work tree and the two git directories beside it (app.git.checkouts makes it).

A checkout has two git directories. `dest/.git` is the agent's: it may write anything there, and
the host never reads it. The runner commits and pushes through a private git directory next to
`dest` (`<dest>.gitdir`). The host never reads the work tree either: a snapshot is staged inside
the sandbox and only its git objects, checked against their ids, come into the private git
directory (app.git.snapshots). Both git directories borrow the mirror's objects through
`objects/info/alternates`, so a mirror must never be garbage-collected while workspaces borrow
from it; the private one also borrows the run's checkpoints (`<dest>.checkpoints`), which no
sandbox sees. Only libgit2 touches the repositories: no hook, filter or fsmonitor runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
from pathlib import Path

import pygit2
from pygit2.enums import CheckoutStrategy

from app.core.errors import WorkspaceError
from app.core.ports import Credentials, Staged, StageLimits, TreeSource
from app.git.layout import checkpoints_dir, private_gitdir
from app.git.remotes import Callbacks, display_url, git_failure, is_local
from app.git.snapshots import import_tree

logger = logging.getLogger(__name__)

SNAPSHOT_TIMEOUT_S = 300.0
# libgit2 keeps ~100 bytes per line of both sides while it builds a patch (100 MiB of newlines took
# 9 GB), so a patch is only built from changed files this small together: their bytes are summed from
# object headers first (nothing read), then their lines counted (one blob in memory at a time).
MAX_DIFF_INPUT_BYTES = 64 * 1024 * 1024
MAX_DIFF_INPUT_LINES = 1_000_000
_GITLINK = 0o160000
_BLOB_MODES = (pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.BLOB_EXECUTABLE, pygit2.enums.FileMode.LINK)


class Workspace:
    """One run's work tree at `path` (what the agent sees) on top of `base_commit`.

    Commits and pushes go through the private git directory `<path>.gitdir`; `path/.git` belongs to
    the agent and is never read here, and neither is the work tree: `snapshot` has it staged where
    the agent's hands are and copies the checked objects. Changes, diff, commits and checkpoints
    all work on `tree`, the last snapshot (the base commit's tree until one is taken).
    """

    def __init__(self, path: Path, base_commit: str) -> None:
        self.path = path
        self.base_commit = base_commit
        self._gitdir = private_gitdir(path)
        self._tree: str | None = None
        self._seeded = False

    @classmethod
    def open(cls, path: Path) -> Workspace:
        """The workspace that `checkout` made at `path` earlier, e.g. after a worker restarted."""
        marker = private_gitdir(path) / "routines-base"
        if not marker.is_file():
            raise WorkspaceError(f"{path} is not a workspace made by checkout(); check out a fresh one")
        return cls(path, marker.read_text().strip())

    def _repo(self) -> pygit2.Repository:
        """The private git directory without its work tree: libgit2 then reads nothing the agent wrote
        (not even a `.gitattributes`, which a diff would otherwise open, follow or block on)."""
        flags = pygit2.enums.RepositoryOpenFlag.NO_SEARCH | pygit2.enums.RepositoryOpenFlag.BARE
        return pygit2.Repository(str(self._gitdir), flags)

    def _worktree_repo(self) -> pygit2.Repository:
        """The private git directory with its work tree, for a restore into a checkout no sandbox ran on yet."""
        return pygit2.Repository(str(self._gitdir), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)

    @property
    def tree(self) -> str:
        """The id of the current tree: the last snapshot's, or the base commit's."""
        if self._tree is None:
            self._tree = str(self._repo()[self.base_commit].peel(pygit2.Tree).id)
        return self._tree

    async def snapshot(self, source: TreeSource, limits: StageLimits | None = None) -> Staged:
        """Have `source` stage the work tree (where the agent's hands are), copy the objects this
        repository lacks, each checked against its id, and make the staged tree the current one."""
        seed = None
        if not self._seeded:
            index = self._gitdir / "index"
            seed = await asyncio.to_thread(index.read_bytes) if index.is_file() else None
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT_S):
                staged = await source.stage(self.base_commit, seed, limits or StageLimits())
                self._seeded = True
                repo = await asyncio.to_thread(self._repo)
                await import_tree(repo, source, staged.tree)
        except TimeoutError:
            raise WorkspaceError(
                f"the snapshot of the work tree took over {SNAPSHOT_TIMEOUT_S:g} s; not taken"
            ) from None
        self._tree = staged.tree
        return staged

    def _base_diff(self, repo: pygit2.Repository) -> pygit2.Diff:
        base = repo[self.base_commit].peel(pygit2.Tree)
        return base.diff_to_tree(repo[self.tree].peel(pygit2.Tree))

    def changed_files(self) -> list[str]:
        """Paths added, modified or deleted from the base commit to the current tree."""
        diff = self._base_diff(self._repo())
        return sorted({path for delta in diff.deltas for path in (delta.old_file.path, delta.new_file.path)})

    def diff(self) -> str:
        """The unified patch from the base commit to the current tree. WorkspaceError, and no patch built,
        when the changed files (old and new sides together) hold over MAX_DIFF_INPUT_BYTES or
        MAX_DIFF_INPUT_LINES."""
        try:
            repo = self._repo()
            diff = self._base_diff(repo)
            _check_diff_inputs(repo, diff)
            return diff.patch or ""
        except (OSError, KeyError, pygit2.GitError) as exc:
            raise WorkspaceError(f"could not diff {self.path} from its base commit: {exc}") from None

    async def commit(self, message: str, author_name: str, author_email: str) -> str | None:
        """Commit the current tree on top of the last commit (the base at first); None if nothing changed."""
        return await asyncio.to_thread(self._commit, message, author_name, author_email)

    def _commit(self, message: str, author_name: str, author_email: str) -> str | None:
        try:
            repo = self._repo()
            parent = repo.head.peel(pygit2.Commit)
            tree = pygit2.Oid(hex=self.tree)
            if tree == parent.tree_id:
                return None
            author = pygit2.Signature(author_name, author_email)
            return str(repo.create_commit("HEAD", author, author, message, tree, [parent.id]))
        except (OSError, pygit2.GitError) as exc:
            raise WorkspaceError(f"could not commit in {self.path}: {exc}") from None

    async def checkpoint(self, ref: str) -> str | None:
        """Commit the current tree on `ref` (e.g. refs/routines/checkpoints/<run>) of the private git
        directory, its objects also kept in the run's checkpoint store beside the checkout, so a
        workspace on this machine can be restored from it; None when nothing changed since the last
        checkpoint (or the base). HEAD does not move; no sandbox ever sees the store."""
        return await asyncio.to_thread(self._checkpoint, ref)

    def _checkpoint(self, ref: str) -> str | None:
        try:
            repo = self._repo()
            tree = pygit2.Oid(hex=self.tree)
            parent = repo.references[ref].peel(pygit2.Commit) if ref in repo.references else repo[self.base_commit]
            if tree == parent.peel(pygit2.Tree).id:
                return None
            author = pygit2.Signature("routines", "routines@localhost")
            oid = repo.create_commit(ref, author, author, f"checkpoint {ref}", tree, [parent.id])
            store = pygit2.Odb(str(checkpoints_dir(self.path) / "objects"))
            _copy_objects(repo, store, oid, also_have=pygit2.Odb(str(self._mirror_objects())))
            return str(oid)
        except (OSError, pygit2.GitError) as exc:
            raise WorkspaceError(f"could not checkpoint {self.path} on {ref}: {exc}") from None

    def _mirror_objects(self) -> Path:
        alternates = (self._gitdir / "objects" / "info" / "alternates").read_text().strip().splitlines()
        return Path(alternates[0])

    async def restore(self, commit: str | None, patch: str) -> str:
        """Bring the fresh work tree (no sandbox has run on it yet) to a checkpoint: to `commit`'s tree when
        this machine still has it, else by applying `patch` (the diff from the base). The restored tree
        becomes the current one. Returns "commit" or "patch"."""
        return await asyncio.to_thread(self._restore, commit, patch)

    def _restore(self, commit: str | None, patch: str) -> str:
        repo = self._worktree_repo()
        try:
            if commit is not None and pygit2.Oid(hex=commit) in repo.odb:
                tree = repo[commit].peel(pygit2.Tree)
                repo.checkout_tree(tree, strategy=CheckoutStrategy.FORCE)  # type: ignore[no-untyped-call]
                self._tree = str(tree.id)
                return "commit"
            if patch.strip():
                repo.apply(pygit2.Diff.parse_diff(patch), pygit2.enums.ApplyLocation.BOTH)
                self._tree = str(repo.index.write_tree())
            return "patch"
        except (OSError, ValueError, pygit2.GitError) as exc:
            raise WorkspaceError(f"could not restore the checkpoint into {self.path}: {exc}") from None

    async def push(self, url: str, branch: str, creds: Credentials | None = None, *, force: bool = True) -> None:
        """Push the last commit to `refs/heads/<branch>` of `url`; only `routines/…` branches.

        `force=False` (a follow-up on a branch people can push to) only fast-forwards it: when someone
        pushed to the branch while the run worked, WorkspaceError says so and their commits stay.
        """
        if not branch.startswith("routines/") or not pygit2.reference_is_valid_name(f"refs/heads/{branch}"):
            raise WorkspaceError(f"refusing to push to branch {branch!r}; runs only push to branches named routines/…")
        await asyncio.to_thread(self._push, url, branch, creds, force)

    def _push(self, url: str, branch: str, creds: Credentials | None, force: bool) -> None:
        repo = self._repo()
        head = repo.head.peel(pygit2.Commit).id
        if is_local(url):
            _push_local(repo, Path(url.removeprefix("file://")), branch, head, force)
            return
        ref = f"refs/heads/{branch}"
        repo.references.create(ref, head, force=True)
        callbacks = Callbacks(url, creds)
        try:
            repo.remotes.create_anonymous(url).push([f"{'+' if force else ''}{ref}:{ref}"], callbacks=callbacks)
        except pygit2.GitError as exc:
            if not force and ("non-fastforward" in str(exc) or "not present locally" in str(exc)):
                raise _moved(branch, url) from None
            raise git_failure(f"push {branch} to", url, exc) from None
        if callbacks.rejected:
            raise WorkspaceError(f"{display_url(url)} refused the push of {branch}: {'; '.join(callbacks.rejected)}")

    def base_file(self, path: str, max_bytes: int) -> bytes | None:
        """The file `path` of the base commit, from git objects only (None: absent, not a regular file, or over
        `max_bytes`); the work tree, which the agent owns, is never read."""
        try:
            entry = self._repo()[self.base_commit].peel(pygit2.Commit).tree[path]
        except (KeyError, ValueError):
            return None
        if entry.filemode not in (pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.BLOB_EXECUTABLE):
            return None
        blob = entry.peel(pygit2.Blob)
        return None if blob.size > max_bytes else bytes(blob.data)

    def base_entry(self, path: str) -> str | None:
        """The git id and mode of `path` in the base commit (`<oid> <mode>`), from git objects; None: absent."""
        try:
            entry = self._repo()[self.base_commit].peel(pygit2.Commit).tree[path]
        except (KeyError, ValueError):
            return None
        return f"{entry.id} {entry.filemode:o}"

    def cleanup(self, *, keep_checkpoints: bool = False) -> None:
        """Remove the work tree, the private git directory, the staging folder and (unless kept) the
        checkpoints. Called once no sandbox process is left; never follows a symlink, also where the
        agent removed write permission."""
        leftovers = [self.path, self._gitdir, self.path.with_name(self.path.name + ".stage")]
        if not keep_checkpoints:
            leftovers.append(checkpoints_dir(self.path))
        for directory in leftovers:
            remove_tree(directory)


def remove_tree(directory: Path) -> None:
    """Remove `directory` and everything in it, also where an agent removed write permission; never
    follows a symlink (nothing when `directory` is one, or absent)."""
    if directory.is_dir() and not directory.is_symlink():
        shutil.rmtree(directory, onerror=_unlock)


def _unlock(_func: object, failed: str, _exc: object) -> None:
    """rmtree's error handler: make a real folder writable (never through a symlink) and remove again."""
    for path in (os.path.dirname(failed), failed):
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(path).st_mode):
                os.chmod(path, stat.S_IRWXU)
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(os.lstat(failed).st_mode):
            shutil.rmtree(failed, ignore_errors=True)
        else:
            os.unlink(failed)


def _moved(branch: str, url: str) -> WorkspaceError:
    return WorkspaceError(
        f"{branch} of {display_url(url)} moved while the run worked (someone pushed to it); the run's commit was not "
        f"pushed, so theirs stay — ask again on the pull request to work from the new head"
    )


def _push_local(repo: pygit2.Repository, target: Path, branch: str, head: pygit2.Oid, force: bool) -> None:
    """Copy the missing objects into the repository at `target` and set the branch (libgit2 cannot push there)."""
    try:
        dest = pygit2.Repository(str(target), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    except pygit2.GitError:
        raise WorkspaceError(
            f"{target} is not a git repository; push to the repository the run was made from"
        ) from None
    ref = f"refs/heads/{branch}"
    if not dest.is_bare and dest.references["HEAD"].raw_target == ref.encode():
        raise WorkspaceError(f"{branch} is checked out in {target}; switch that repository to another branch")
    _copy_objects(repo, dest.odb, head)
    old = dest.references.get(ref)
    if not force and old is not None and old.target != head and not dest.descendant_of(head, old.target):
        raise _moved(branch, str(target))
    dest.references.create(ref, head, force=True)


def _check_diff_inputs(repo: pygit2.Repository, diff: pygit2.Diff) -> None:
    """WorkspaceError unless the blobs `diff` compares hold at most MAX_DIFF_INPUT_BYTES, then at most
    MAX_DIFF_INPUT_LINES, together; sizes come from object headers, so an oversized blob is never read."""
    blobs = [side.id for delta in diff.deltas for side in (delta.old_file, delta.new_file) if side.mode in _BLOB_MODES]
    size = 0
    for oid in blobs:
        size += repo.odb.read_header(oid)[1]
        if size > MAX_DIFF_INPUT_BYTES:
            raise WorkspaceError(
                f"the changed files hold over {MAX_DIFF_INPUT_BYTES // 1024**2} MiB (old and new sides "
                "together); no patch is built from that much"
            )
    lines = sum(repo[oid].peel(pygit2.Blob).data.count(b"\n") + 1 for oid in blobs)
    if lines > MAX_DIFF_INPUT_LINES:
        raise WorkspaceError(
            f"the changed files hold {lines:,} lines (old and new sides together); no patch is built from "
            f"over {MAX_DIFF_INPUT_LINES:,}"
        )


def _copy_objects(
    repo: pygit2.Repository, dest: pygit2.Odb, head: pygit2.Oid, *, also_have: pygit2.Odb | None = None
) -> None:
    """Write into `dest` every object reachable from commit `head` that neither it nor `also_have` has."""
    missing: list[pygit2.Oid] = []
    pending = [head]
    while pending:
        oid = pending.pop()
        if oid in dest or (also_have is not None and oid in also_have):
            continue
        missing.append(oid)
        obj = repo[oid]
        if isinstance(obj, pygit2.Commit):
            pending += [obj.tree_id, *obj.parent_ids]
        elif isinstance(obj, pygit2.Tree):
            pending += [entry.id for entry in obj if entry.filemode != _GITLINK]
    for oid in reversed(missing):
        kind, data = repo.odb.read(oid)
        dest.write(kind, data)
