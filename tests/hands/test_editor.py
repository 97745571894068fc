"""The editor itself, as the hands process and the memory tool run it: hostile files are refused at once."""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from pathlib import Path

import pytest

from app.hands.editor import MAX_FILE_BYTES, Editor, EditorError

AT_FDCWD, RENAME_EXCHANGE = -100, 2


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "a.txt").write_text("one\ntwo\n")
    return root


def refused(editor: Editor, **params: object) -> str:
    with pytest.raises(EditorError) as caught:
        editor.run(dict(params))
    return str(caught.value)


def test_a_fifo_is_refused_without_blocking(ws: Path) -> None:
    os.mkfifo(ws / "pipe")
    editor = Editor(str(ws))
    done = threading.Event()

    def attempts() -> None:
        for command in ("view", "str_replace", "insert"):
            params = {"path": "pipe", "old_str": "x", "new_str": "y", "insert_line": 0, "insert_text": "x"}
            assert "not a regular file" in refused(editor, command=command, **params)
        assert "not a regular file" in refused(editor, command="create", path="pipe", file_text="x")
        done.set()

    thread = threading.Thread(target=attempts, daemon=True)
    thread.start()
    thread.join(10)
    assert done.is_set(), "the editor blocked on a FIFO"


def test_a_socket_and_a_device_are_refused(ws: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(ws / "sock"))
    editor = Editor(str(ws))
    assert "regular file" in refused(editor, command="view", path="sock")
    assert "regular file" in refused(editor, command="create", path="sock", file_text="x")
    server.close()
    outside = Editor("/dev")
    assert "not a regular file" in refused(outside, command="view", path="null")


def test_a_huge_sparse_file_is_refused_before_it_is_read(ws: Path) -> None:
    with open(ws / "big.bin", "wb") as out:
        out.truncate(5 * 1024**3)
    editor = Editor(str(ws))
    for command in ("view", "str_replace", "insert"):
        message = refused(editor, command=command, path="big.bin", old_str="a", new_str="b", insert_line=0)
        assert "5,368,709,120 bytes" in message and f"{MAX_FILE_BYTES:,}" in message


def test_a_symlink_as_the_last_component_is_never_followed_outside(ws: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret\n")
    (ws / "link").symlink_to(secret)
    (ws / "inside").symlink_to("a.txt")
    editor = Editor(str(ws))
    assert "resolves outside" in refused(editor, command="view", path="link")
    assert "resolves outside" in refused(editor, command="create", path="link", file_text="pwned")
    assert secret.read_text() == "secret\n"
    assert "two" in editor.run({"command": "view", "path": "inside"}), "a link inside the workspace still works"


def test_names_that_are_not_utf8_are_listed_readably(ws: Path) -> None:
    with open(os.path.join(os.fsencode(ws), b"caf\xe9.txt"), "wb") as out:
        out.write(b"x\n")
    listing = Editor(str(ws)).run({"command": "view", "path": str(ws)})
    assert "caf\ufffd.txt" in listing
    listing.encode("utf-8")  # strict: nothing that JSON or the model API would refuse


def test_a_huge_folder_lists_a_bounded_number_of_entries(ws: Path) -> None:
    many = ws / "many"
    many.mkdir()
    for n in range(3000):
        (many / f"f{n:05d}").touch()
    listing = Editor(str(ws)).run({"command": "view", "path": "many"})
    assert len(listing.splitlines()) <= 2003 and "more entries not shown" in listing


def test_writes_keep_the_file_and_its_mode(ws: Path) -> None:
    script = ws / "run.sh"
    script.write_text("echo one\n")
    script.chmod(0o755)
    os.link(script, ws / "hard")
    editor = Editor(str(ws))
    editor.run({"command": "str_replace", "path": "run.sh", "old_str": "one", "new_str": "two"})
    assert script.read_text() == "echo two\n" and os.access(script, os.X_OK)
    assert (ws / "hard").read_text() == "echo two\n", "edited in place, like the editor did before"


def test_a_folder_swapped_for_a_symlink_mid_call_never_leads_outside(ws: Path, tmp_path: Path) -> None:
    """The race the host-side editor lost at the last component, played on a folder of the path: a thread
    exchanges `d` (a real folder) and a symlink to a folder outside, atomically and as fast as it can,
    while views and writes go on."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("outside\n")
    (ws / "d").mkdir()
    (ws / "d" / "f.txt").write_text("inside\n")
    (ws / "d.link").symlink_to(outside)
    libc = ctypes.CDLL(None, use_errno=True)
    names = (ctypes.c_char_p(os.fsencode(ws / "d")), ctypes.c_char_p(os.fsencode(ws / "d.link")))
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            libc.renameat2(AT_FDCWD, names[0], AT_FDCWD, names[1], RENAME_EXCHANGE)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    editor = Editor(str(ws))
    seen: set[str] = set()
    try:
        for n in range(400):
            for params in (
                {"command": "view", "path": "d/f.txt"},
                {"command": "create", "path": f"d/new{n}.txt", "file_text": "pwned\n"},
                {"command": "str_replace", "path": "d/f.txt", "old_str": "side", "new_str": "pwned"},
            ):
                try:
                    seen.add(editor.run(params).splitlines()[-1])
                except EditorError as exc:
                    seen.add(str(exc).split(";")[0].split(" ", 1)[-1])
    finally:
        stop.set()
        swapper.join(5)
    assert sorted(p.name for p in outside.iterdir()) == ["f.txt"], "nothing was created outside"
    assert (outside / "f.txt").read_text() == "outside\n", "nothing outside was changed"
    assert not any("\toutside" in line for line in seen), "nothing outside was read"
    assert "resolves outside the workspace" in seen, "the race ran: some calls met the symlink"
