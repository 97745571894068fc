"""Bare repositories on disk for the GitHub test server: create them, read their branches."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pygit2

_BOT = pygit2.Signature("GitHub Test Server", "noreply@example.invalid")


def create_bare_repo(path: Path, name: str, source_dir: Path | None, default_branch: str) -> None:
    """Make a bare repository at `path` whose `default_branch` holds one commit or more.

    A `source_dir` that is a git repository is cloned with its history; a plain folder becomes
    the initial commit; no folder gives a README-only initial commit (GitHub's "add a README").
    """
    if path.exists():
        raise ValueError(f"{path} already exists; every repository needs its own name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if source_dir is not None and _is_git_repo(Path(source_dir)):
        subprocess.run(
            ["git", "clone", "--quiet", "--bare", str(source_dir), str(path)], check=True, capture_output=True
        )
        repo = pygit2.Repository(str(path))
        if f"refs/heads/{default_branch}" not in repo.references:
            shutil.rmtree(path)
            raise ValueError(f"{source_dir} has no branch {default_branch!r}; pass default_branch= to match it")
        repo.references.create("HEAD", f"refs/heads/{default_branch}", force=True)
        return
    repo = pygit2.init_repository(str(path), bare=True, initial_head=default_branch)
    if source_dir is None:
        tree = _tree_of_files(repo, {"README.md": f"# {name}\n".encode()})
    else:
        tree = _tree_of_folder(repo, Path(source_dir))
    repo.create_commit(f"refs/heads/{default_branch}", _BOT, _BOT, "Initial commit", tree, [])


def branch_sha(path: Path, branch: str) -> str | None:
    """The commit id at `refs/heads/<branch>`, or None when the branch does not exist."""
    ref = pygit2.Repository(str(path)).references.get(f"refs/heads/{branch}")
    return None if ref is None else str(ref.peel(pygit2.Commit).id)


def set_pull_ref(path: Path, number: int, sha: str) -> None:
    """Point `refs/pull/<number>/head` at `sha`, as GitHub keeps it for every pull request (a fork's too)."""
    pygit2.Repository(str(path)).references.create(f"refs/pull/{number}/head", sha, force=True)


def commits_between(path: Path, base_sha: str, head_sha: str) -> int:
    """How many commits `head` has that `base` has not (GitHub's "ahead by")."""
    ahead, _behind = pygit2.Repository(str(path)).ahead_behind(head_sha, base_sha)
    return int(ahead)


def _is_git_repo(folder: Path) -> bool:
    return (folder / ".git").exists() or ((folder / "HEAD").is_file() and (folder / "objects").is_dir())


def _tree_of_files(repo: pygit2.Repository, files: dict[str, bytes]) -> pygit2.Oid:
    builder = repo.TreeBuilder()
    for name, data in files.items():
        builder.insert(name, repo.create_blob(data), pygit2.enums.FileMode.BLOB)
    return builder.write()


def _tree_of_folder(repo: pygit2.Repository, folder: Path) -> pygit2.Oid:
    builder = repo.TreeBuilder()
    for entry in sorted(folder.iterdir()):
        if entry.name == ".git":
            continue
        if entry.is_dir():
            builder.insert(entry.name, _tree_of_folder(repo, entry), pygit2.enums.FileMode.TREE)
        else:
            mode = pygit2.enums.FileMode.BLOB_EXECUTABLE if entry.stat().st_mode & 0o111 else pygit2.enums.FileMode.BLOB
            builder.insert(entry.name, repo.create_blob(entry.read_bytes()), mode)
    return builder.write()
