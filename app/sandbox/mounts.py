"""The bind mounts of a bubblewrap sandbox: the system read-only, the host's secrets masked, the workspace.

Each function returns bwrap arguments. They read the host's file system only where the agent
cannot write: the system folders, and the workspace's `.git` before any command of the agent ran.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from app.core.errors import SandboxError
from app.sandbox.runtime import Runtime, alternates


def system_mounts(paths: Sequence[str]) -> list[str]:
    args: list[str] = []
    for path in paths:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def etc_masks(root: str = "/etc") -> list[str]:
    """Mount over everything in `root` that other users may not read: the host's own list of secrets.

    Read for every sandbox (a file made unreadable since the last one must be masked too), so it looks
    only at what can need a mask: symbolic links (most of /etc/ssl/certs) are told apart by the
    directory listing's entry type and never stat-ed, as neither kind of mask applies to them."""
    args: list[str] = []
    pending = [root]
    while pending:
        current = pending.pop(0)
        try:
            with os.scandir(current) as listing:
                entries = sorted((e for e in listing if not e.is_symlink()), key=lambda e: not e.is_dir())
        except OSError:  # as os.walk: a folder that cannot be listed is passed over
            continue
        inside: list[str] = []
        for entry in entries:
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except FileNotFoundError:  # gone since the listing: nothing left to mask
                continue
            if stat.S_ISDIR(mode):
                if (mode & 0o005) != 0o005:
                    args += ["--tmpfs", entry.path]
                else:
                    inside.append(entry.path)
            elif stat.S_ISREG(mode) and not mode & 0o004:
                args += ["--ro-bind", "/dev/null", entry.path]
        pending[:0] = inside
    return args


def hide_mounts(hide: Sequence[Path], ro_paths: Sequence[str]) -> list[str]:
    """Masks for hidden paths that a read-only mount would otherwise show (elsewhere they are absent)."""
    roots = [Path(p).resolve() for p in ro_paths if os.path.isdir(p)]
    args: list[str] = []
    for path in (p.resolve() for p in hide):
        if not any(path.is_relative_to(root) for root in roots) or not path.exists():
            continue
        args += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
    return args


def workspace_mounts(workdir: Path) -> list[str]:
    """The workspace read-write, its `.git` pinned with hooks and config read-only, its alternates read-only."""
    if not workdir.is_dir():
        raise SandboxError(f"the workspace {workdir} does not exist; check it out before starting the sandbox")
    ws = str(workdir)
    args = ["--bind", ws, ws]
    git = workdir / ".git"
    if not git.is_dir() or git.is_symlink():
        return args
    (git / "hooks").mkdir(exist_ok=True)
    (git / "config").touch(exist_ok=True)
    args += ["--bind", str(git), str(git)]
    args += ["--ro-bind", str(git / "hooks"), str(git / "hooks"), "--ro-bind", str(git / "config"), str(git / "config")]
    for objects in alternates(workdir):
        args += ["--ro-bind", objects, objects]
    return args


def runtime_mounts(runtime: Runtime, ro_paths: Sequence[str]) -> list[str]:
    """What the hands process needs besides the system: its interpreter's prefix (site-packages masked)
    when the system mounts do not show it, and its own files read-only."""
    roots = [os.path.realpath(p) for p in ro_paths if os.path.isdir(p)]
    seen = any(_under(runtime.prefix, root) for root in roots)
    args: list[str] = []
    if runtime.prefix and not seen:
        args += ["--ro-bind", runtime.prefix, runtime.prefix]
        for site in sorted(glob.glob(f"{runtime.prefix}/lib/python3*/site-packages")):
            args += ["--tmpfs", site]
    if not any(_under(runtime.python, root) for root in [*roots, runtime.prefix] if root):
        raise SandboxError(
            f"the worker's Python {runtime.python} is outside its prefix {runtime.prefix}; "
            "run the worker from a regular Python installation or virtual environment"
        )
    for host, inside in runtime.binds:
        args += ["--ro-bind", host, inside]
    return args


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
