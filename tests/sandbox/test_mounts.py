"""The masks over what other users may not read in /etc (here a folder laid out like it)."""

from __future__ import annotations

import os
from pathlib import Path

from app.sandbox.mounts import etc_masks


def masks(root: Path) -> set[tuple[str, ...]]:
    args, found, i = etc_masks(str(root)), set(), 0
    while i < len(args):
        width = 2 if args[i] == "--tmpfs" else 3
        found.add(tuple(args[i : i + width]))
        i += width
    return found


def test_masks_unreadable_files_and_folders_at_any_depth_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "shadow").write_text("secret")
    (tmp_path / "shadow").chmod(0o640)
    (tmp_path / "hosts").write_text("127.0.0.1 localhost")
    (tmp_path / "ssl" / "private").mkdir(parents=True)
    (tmp_path / "ssl" / "private" / "key.pem").write_text("key")
    (tmp_path / "ssl" / "private").chmod(0o700)
    (tmp_path / "ssl" / "deep").mkdir()
    (tmp_path / "ssl" / "deep" / "token").write_text("t")
    (tmp_path / "ssl" / "deep" / "token").chmod(0o600)
    os.symlink(tmp_path / "shadow", tmp_path / "ssl" / "link-to-shadow")  # a link needs no mask: its target has one
    os.mkfifo(tmp_path / "fifo", 0o600)

    assert masks(tmp_path) == {
        ("--ro-bind", "/dev/null", str(tmp_path / "shadow")),
        ("--tmpfs", str(tmp_path / "ssl" / "private")),
        ("--ro-bind", "/dev/null", str(tmp_path / "ssl" / "deep" / "token")),
    }


def test_a_folder_masked_whole_is_not_looked_into(tmp_path: Path) -> None:
    (tmp_path / "private" / "inner").mkdir(parents=True)
    (tmp_path / "private" / "inner" / "key").write_text("k")
    (tmp_path / "private" / "inner" / "key").chmod(0o600)
    (tmp_path / "private").chmod(0o750)

    assert masks(tmp_path) == {("--tmpfs", str(tmp_path / "private"))}
