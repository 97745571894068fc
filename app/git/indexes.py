"""Index files that libgit2 wrote, joined and patched: two checkouts of parts of one tree each keep the
stat data of the files they wrote in their own index, and the work tree's index takes each entry from
the one that wrote it; a work tree brought forward by `app.git.updates` has the entries of what it
wrote replaced (pygit2 sets no stat data, so this reads git's index format, versions 2 and 3)."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
import secrets
import struct
from array import array
from pathlib import Path

from app.core.errors import WorkspaceError

_HEADER, _STAT_AND_ID, _EXTENDED, _LENGTH = 12, 62, 0x4000, 0xFFF
_U32 = 0xFFFFFFFF


def join_indexes(into: Path, other: Path, paths: list[str]) -> None:
    """Replace the index `into` by one whose entries under `paths` (files or folders) come from the
    index `other` and the rest from `into`; both must list the same paths (one tree read into each)."""
    mine, theirs = into.read_bytes(), other.read_bytes()
    names, offsets = _entries(mine)
    if (names, offsets) != _entries(theirs):
        raise WorkspaceError(f"the indexes {into} and {other} list different paths; check out again")
    parts, at = [mine[:_HEADER]], 0
    for first, last in _runs(names, paths):
        if first < at:
            raise WorkspaceError(f"the parts {paths} of a checkout overlap; check out again")
        parts += [mine[offsets[at] : offsets[first]], theirs[offsets[first] : offsets[last]]]
        at = last
    parts.append(mine[offsets[at] : -20])  # the rest, and the extensions (the cache of trees)
    body = b"".join(parts)
    trailer = hashlib.sha1(body).digest()
    staging = into.with_name(f".{into.name}.{secrets.token_hex(4)}")
    staging.write_bytes(body + trailer)
    _write_layout(into, trailer, array("I", offsets))  # the entries kept their places: for patch_index
    staging.replace(into)


def _runs(names: list[bytes], paths: list[str]) -> list[tuple[int, int]]:
    """The runs [first, last) of entries that are one of `paths` or under one, in order. An index is
    sorted by path bytes, so the entries under a folder are next to each other (`/` sorts before `0`)."""
    if any(a >= b for a, b in itertools.pairwise(names)):
        raise WorkspaceError("an index file libgit2 wrote is not sorted by path; check out again")
    runs = []
    for path in (path.encode() for path in paths):
        exact = bisect.bisect_left(names, path)
        if exact < len(names) and names[exact] == path:
            runs.append((exact, exact + 1))
        runs.append((bisect.bisect_left(names, path + b"/"), bisect.bisect_left(names, path + b"0")))
    return sorted(run for run in runs if run[0] < run[1])


def _entries(data: bytes) -> tuple[list[bytes], list[int]]:
    """The paths of the entries of a raw index of version 2 or 3, and where each entry starts (with one
    more: where the last ends)."""
    version = int.from_bytes(data[4:8], "big")
    if data[:4] != b"DIRC" or version not in (2, 3) or hashlib.sha1(data[:-20]).digest() != data[-20:]:
        raise WorkspaceError("an index file libgit2 wrote is not of version 2 or 3, or broken; check out again")
    names, offsets, at = [], [_HEADER], _HEADER
    for _ in range(int.from_bytes(data[8:12], "big")):
        flags = data[at + 60] << 8 | data[at + 61]
        name = at + _STAT_AND_ID + (2 if flags & _EXTENDED else 0)
        length = flags & _LENGTH
        nul = name + length if length != _LENGTH else data.index(b"\0", name)
        names.append(data[name:nul])
        at += (nul - at + 8) & ~7
        offsets.append(at)
    return names, offsets


def patch_index(index: Path, removed: list[tuple[bytes, bool]], written: list[tuple[bytes, bytes]]) -> None:
    """Replace `index` by one without the entries `removed` names (a path, and whether it was a folder,
    whose entries all go) and without those of the paths written, then with each `written` entry (path,
    raw entry from `index_entry`), in git's order. The entries are found by bisection over the index's
    layout (remembered beside it by `remember_layout`; read again when missing or stale), so the time
    grows with what changed, not with the index. The cache of trees is left out: git and libgit2 make
    it again when they need it."""
    data = index.read_bytes()
    offsets = _layout(index, data)
    count = len(offsets) - 1

    def path_at(at: int) -> bytes:
        start = offsets[at]
        flags = int.from_bytes(data[start + 60 : start + 62], "big")
        name = start + _STAT_AND_ID + (2 if flags & _EXTENDED else 0)
        length = flags & 0xFFF
        return data[name : name + length] if length < 0xFFF else data[name : data.index(b"\0", name)]

    dropped: list[tuple[int, int]] = []
    for path, folder in removed:
        first = bisect.bisect_left(range(count), path + b"/" if folder else path, key=path_at)
        if folder:
            dropped.append((first, bisect.bisect_left(range(count), path + b"0", lo=first, key=path_at)))
        elif first < count and path_at(first) == path:
            dropped.append((first, first + 1))
    new = sorted(written)
    if len({path for path, _ in new}) != len(new):
        raise WorkspaceError(f"two entries written into {index} have one path; check out again")
    inserted: dict[int, list[bytes]] = {}
    at = 0
    for path, entry in new:  # in order, so each search starts where the last one ended
        at = bisect.bisect_left(range(count), path, lo=at, key=path_at)
        inserted.setdefault(at, []).append(entry)
        if at < count and path_at(at) == path:
            dropped.append((at, at + 1))
    cuts = sorted({0, count, *(at for span in dropped for at in span), *inserted})
    position = {at: n for n, at in enumerate(cuts)}
    gone = {at for first, last in dropped for at in cuts[position[first] : position[last]]}
    parts, kept, layout = [data[:8], b""], 0, array("I", [_HEADER])
    for first, last in [*itertools.pairwise(cuts), (count, count)]:
        for entry in inserted.get(first, []):
            parts.append(entry)
            layout.append(layout[-1] + len(entry))
        if first not in gone and first < last:
            shift = layout[-1] - offsets[first]
            parts.append(data[offsets[first] : offsets[last]])
            layout.extend(map(shift.__add__, offsets[first + 1 : last + 1]))
            kept += last - first
    parts[1] = (kept + len(new)).to_bytes(4, "big")
    body = b"".join(parts)
    trailer = hashlib.sha1(body).digest()
    staging = index.with_name(f".{index.name}.{secrets.token_hex(4)}")
    staging.write_bytes(body + trailer)
    _write_layout(index, trailer, layout)
    staging.replace(index)


def remember_layout(index: Path) -> None:
    """Keep where each entry of `index` starts beside it, for `patch_index`."""
    data = index.read_bytes()
    _layout(index, data)


def _layout(index: Path, data: bytes) -> array[int]:
    """The offset of each entry of the raw index `data` and where the last one ends: remembered beside
    `index` for exactly this content (its checksum), else read entry by entry and remembered."""
    remembered = _layout_file(index)
    try:
        with remembered.open("rb") as found:
            if found.read(20) == data[-20:]:
                offsets = array("I")
                offsets.frombytes(found.read())
                if offsets and offsets[0] == _HEADER and offsets[-1] <= len(data) - 20:
                    return offsets
    except OSError:
        pass
    offsets = array("I", _entries(data)[1])
    _write_layout(index, data[-20:], offsets)
    return offsets


def _layout_file(index: Path) -> Path:
    return index.with_name(f"routines-{index.name}-layout")


def _write_layout(index: Path, trailer: bytes, offsets: array[int]) -> None:
    staging = index.with_name(f".layout.{secrets.token_hex(4)}")
    staging.write_bytes(trailer + offsets.tobytes())
    staging.replace(_layout_file(index))


def index_entry(path: bytes, mode: int, oid: str, info: os.stat_result) -> bytes:
    """One entry of an index of version 2 (or 3, whose plain entries are the same)."""
    (ctime, ctime_ns), (mtime, mtime_ns) = divmod(info.st_ctime_ns, 10**9), divmod(info.st_mtime_ns, 10**9)
    stat = struct.pack(
        ">10I",
        ctime & _U32,
        ctime_ns,
        mtime & _U32,
        mtime_ns,
        info.st_dev & _U32,
        info.st_ino & _U32,
        mode,
        info.st_uid & _U32,
        info.st_gid & _U32,
        info.st_size & _U32,
    )
    raw = stat + bytes.fromhex(oid) + min(len(path), 0xFFF).to_bytes(2, "big") + path
    return raw + b"\0" * (8 - len(raw) % 8)
