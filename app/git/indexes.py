"""Index files that libgit2 wrote, joined: two checkouts of parts of one tree each keep the stat data of
the files they wrote in their own index, and the work tree's index takes each entry from the one that
wrote it (pygit2 sets no stat data, so this reads git's index format, versions 2 and 3)."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from app.core.errors import WorkspaceError

_HEADER, _STAT_AND_ID, _EXTENDED = 12, 62, 0x4000


def join_indexes(into: Path, other: Path, paths: list[str]) -> None:
    """Replace the index `into` by one whose entries under `paths` (files or folders) come from the
    index `other` and the rest from `into`; both must list the same paths (one tree read into each)."""
    mine, theirs = into.read_bytes(), other.read_bytes()
    ours_at, theirs_at = _entries(mine), _entries(theirs)
    if [path for path, _, _ in ours_at] != [path for path, _, _ in theirs_at]:
        raise WorkspaceError(f"the indexes {into} and {other} list different paths; check out again")
    exact = {path.encode() for path in paths}
    under = tuple(path + b"/" for path in exact)
    parts = [mine[:_HEADER]]
    for (path, start, end), (_, their_start, their_end) in zip(ours_at, theirs_at, strict=True):
        taken = path in exact or path.startswith(under)
        parts.append(theirs[their_start:their_end] if taken else mine[start:end])
    parts.append(mine[ours_at[-1][2] if ours_at else _HEADER : -20])  # the extensions (the cache of trees)
    body = b"".join(parts)
    staging = into.with_name(f".{into.name}.{secrets.token_hex(4)}")
    staging.write_bytes(body + hashlib.sha1(body).digest())
    staging.replace(into)


def _entries(data: bytes) -> list[tuple[bytes, int, int]]:
    """(path, start, end) of each entry of a raw index of version 2 or 3."""
    version = int.from_bytes(data[4:8], "big")
    if data[:4] != b"DIRC" or version not in (2, 3) or hashlib.sha1(data[:-20]).digest() != data[-20:]:
        raise WorkspaceError("an index file libgit2 wrote is not of version 2 or 3, or broken; check out again")
    found, at = [], _HEADER
    for _ in range(int.from_bytes(data[8:12], "big")):
        flags = int.from_bytes(data[at + 60 : at + 62], "big")
        name = at + _STAT_AND_ID + (2 if flags & _EXTENDED else 0)
        nul = data.index(b"\0", name)
        end = at + ((nul - at + 8) & ~7)
        found.append((data[name:nul], at, end))
        at = end
    return found
