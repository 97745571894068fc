"""Staging inside the sandbox (run here in-process): what goes into the tree, what is left out and why."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TypedDict

import pygit2

from app.git.checkouts import checkout
from app.git.mirrors import Mirrors
from app.hands.stage import Stager, _own_stat
from tests.support.git import commit_file, git


class Limits(TypedDict):
    max_file_bytes: int
    max_total_bytes: int
    max_files: int


LIMITS = Limits(max_file_bytes=1000, max_total_bytes=5000, max_files=100)


def write_bytes(path: bytes, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)


async def staged_checkout(tmp_path: Path) -> tuple[Path, str, list[str]]:
    origin = tmp_path / "origin"
    git("init", "-q", "-b", "main", str(origin))
    commit_file(origin, "keep.txt", "keep\n")
    commit_file(origin, "gone.txt", "gone\n")
    (origin / "run.sh").write_text("#!/bin/sh\n")
    commit_file(origin, ".gitignore", "*.log\n")
    mirror = await Mirrors(tmp_path / "cache", spares=False).ensure(str(origin))
    ws = await checkout(mirror, "main", tmp_path / "run" / "repo")
    objects = [str(Path(mirror) / "objects")]
    return ws.path, ws.base_commit, objects


async def test_what_is_staged_and_what_is_left_out(tmp_path: Path) -> None:
    work, base, objects = await staged_checkout(tmp_path)
    (work / "gone.txt").unlink()
    (work / "run.sh").chmod(0o755)
    (work / "new.txt").write_text("new\n")
    (work / "link").symlink_to("keep.txt")
    (work / "debug.log").write_text("ignored\n")
    os.mkfifo(work / "pipe")
    (work / "big.bin").write_bytes(b"x" * 1001)
    write_bytes(os.path.join(os.fsencode(work), b"caf\xe9.txt"), b"x")
    nested = work / "nested" / "repo"
    nested.mkdir(parents=True)
    git("init", "-q", str(nested))

    stager = Stager(str(work), str(tmp_path / "stage"), objects)
    staged = stager.stage(base, **LIMITS)

    repo = pygit2.Repository(str(tmp_path / "stage"))
    tree = repo[staged["tree"]].peel(pygit2.Tree)
    names = {entry.name: entry.filemode for entry in tree}
    assert "gone.txt" not in names and names["run.sh"] == pygit2.enums.FileMode.BLOB_EXECUTABLE
    assert names["link"] == pygit2.enums.FileMode.LINK and tree["new.txt"].peel(pygit2.Blob).data == b"new\n"
    assert not {"debug.log", "pipe", "big.bin"} & set(names)
    skipped = {item["path"]: item["reason"] for item in staged["skipped"]}
    assert "1,001 bytes" in skipped["big.bin"] and "not UTF-8" in skipped["caf\ufffd.txt"]
    assert [kind for _, kind, _ in stager.objects([staged["tree"]], 10_000)] == [2]


async def test_the_total_of_new_content_is_capped(tmp_path: Path) -> None:
    work, base, objects = await staged_checkout(tmp_path)
    for n in range(8):
        (work / f"part{n}.txt").write_bytes(b"y" * 900)
    staged = Stager(str(work), str(tmp_path / "stage"), objects).stage(base, **LIMITS)
    left = [item for item in staged["skipped"] if "one snapshot may add" in item["reason"]]
    assert len(left) == 3 and staged["files"] == 4 + 5


async def test_a_seed_index_is_taken_with_this_process_as_owner(tmp_path: Path) -> None:
    work, base, objects = await staged_checkout(tmp_path)
    seed = (tmp_path / "run" / "repo.gitdir" / "index").read_bytes()
    owned = _own_stat(seed)
    assert owned is not None and len(owned) == len(seed) and owned[:12] == seed[:12]
    first = 12
    assert struct.unpack(">II", owned[first + 28 : first + 36]) == (os.getuid(), os.getgid())
    (tmp_path / "seeded").write_bytes(owned)
    index = pygit2.Index(str(tmp_path / "seeded"))
    assert sorted(e.path for e in index) == [".gitignore", "gone.txt", "keep.txt", "run.sh"]
    assert _own_stat(b"not an index") is None
    staged = Stager(str(work), str(tmp_path / "stage"), objects).stage(base, seed=seed, **LIMITS)
    assert staged["skipped"] == [] and staged["files"] == 4
