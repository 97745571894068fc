"""The saved result of an environment's setup, packed and unpacked where the agent's hands are.

A stash is a tar file in the exchange folder (a folder only the hands process sees): `workspace/<name>`
for each top-level entry of the work tree the setup created (`node_modules`, `.venv`, …) and `home/…`
for what it left in $HOME (`~/.npm`, `~/.local`, …). Packing runs here, inside the sandbox, so a symlink
or FIFO the setup made is archived as what it is and never followed; unpacking makes folders and regular
files first (tarfile's `data` filter) and symlinks last, never writing through a link, so a stash can only
ever fill the work tree and $HOME. Only regular files, folders and symlinks are kept.
"""

from __future__ import annotations

import os
import tarfile

STASH = "stash.tar"


def names(workspace: str) -> list[str]:
    """The work tree's top-level entries, `.git` aside."""
    return sorted(name for name in os.listdir(workspace) if name != ".git")


def pack(workspace: str, home: str, exchange: str, created: list[str], max_bytes: int) -> dict[str, int]:
    """Write the stash of `created` (top-level names of the work tree) and $HOME; {files, bytes}."""
    target = os.path.join(exchange, STASH)
    files = 0

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        nonlocal files
        if not (info.isfile() or info.isdir() or info.issym()):
            return None
        files += 1
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(target, "w") as tar:
        for name in created:
            if "/" in name or name in ("", ".", "..", ".git"):
                continue
            path = os.path.join(workspace, name)
            if os.path.lexists(path):
                tar.add(path, arcname=f"workspace/{name}", recursive=True, filter=keep)
        if os.path.isdir(home):
            for name in sorted(os.listdir(home)):
                tar.add(os.path.join(home, name), arcname=f"home/{name}", recursive=True, filter=keep)
    size = os.path.getsize(target)
    if size > max_bytes:
        os.unlink(target)
        raise ValueError(f"the setup's result is {size:,} bytes, over the {max_bytes:,} a saved setup may be")
    return {"files": files, "bytes": size}


def unpack(workspace: str, home: str, exchange: str) -> dict[str, int]:
    """Fill the work tree and $HOME from the stash; {files}."""
    return {"files": unpack_tar(os.path.join(exchange, STASH), workspace, home)}


def unpack_tar(path: str, workspace: str, home: str) -> int:
    """Extract the stash at `path`: its `workspace/` part into `workspace`, its `home/` part into `home`
    (`.git` never); the number of entries.

    Folders and regular files first, through tarfile's `data` filter; symlinks last, as they are (a
    virtualenv's absolute links included), each only where every folder above it is a real folder of
    the target: nothing is ever written through a link, whatever the names or the Python version."""
    files = 0
    links: list[tuple[str, str, str]] = []  # (target root, relative path, link text)
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            for prefix, target in (("workspace/", workspace), ("home/", home)):
                if not member.name.startswith(prefix) or len(member.name) == len(prefix):
                    continue
                name = member.name[len(prefix) :]
                parts = name.split("/")
                if parts[0] == ".git" or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
                    break
                if member.issym():
                    links.append((target, name, member.linkname))
                elif member.isdir() or member.isfile():
                    if not _real_folders(target, parts[:-1]):
                        break
                    tar.extract(member.replace(name=name, deep=False), target, filter="data")
                else:
                    break
                files += 1
                break
    for target, name, text in sorted(links, key=lambda link: link[1].count("/")):
        parts = name.split("/")
        if _real_folders(target, parts[:-1]) and not os.path.lexists(os.path.join(target, name)):
            os.makedirs(os.path.join(target, *parts[:-1]), exist_ok=True)
            os.symlink(text, os.path.join(target, name))
    return files


def _real_folders(root: str, parts: list[str]) -> bool:
    """Whether each of `parts` below `root` is a real folder or absent (to be made), never a link."""
    path = root
    for part in parts:
        path = os.path.join(path, part)
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
            return False
    return True
