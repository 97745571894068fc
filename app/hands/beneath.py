"""Opening a path beneath a folder descriptor, never outside it, whatever the agent does to the path.

`openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` has the kernel resolve the whole path atomically
and refuse `..`, absolute and magic symlinks that would leave the folder, at any component, however
folders are swapped meanwhile (Linux 5.6+). Where it is missing, the path is walked component by
component with O_NOFOLLOW and no symlink is followed at all (`Unsafe`).
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

_RESOLVE_BENEATH, _RESOLVE_NO_MAGICLINKS = 0x08, 0x02
_SYS_OPENAT2 = 437  # the same number on every architecture Linux added it for


class Unsafe(OSError):
    """A path the fallback walk will not follow (a symlink, where openat2 is missing)."""


def open_beneath(folder: int, relative: str, flags: int, mode: int = 0) -> int:
    """Open `relative` beneath the directory descriptor `folder`, never resolving outside it.

    openat2 with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS where the kernel has it (Linux 5.6); else a
    walk that opens each folder with O_NOFOLLOW and refuses any symlink (`Unsafe`)."""
    try:
        return _openat2(folder, relative, flags, mode)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
    return _walk(folder, relative, flags, mode)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc: Any = None


def _openat2(folder: int, relative: str, flags: int, mode: int) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    resolve = _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    size = ctypes.c_size_t(ctypes.sizeof(how))
    path = ctypes.c_char_p(os.fsencode(relative))
    fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(folder), path, ctypes.byref(how), size)
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), relative)
    return int(fd)


def _walk(folder: int, relative: str, flags: int, mode: int) -> int:
    parts = [p for p in relative.split("/") if p and p != "."]
    if any(p == ".." for p in parts):
        raise Unsafe(errno.EXDEV, "the path goes through ..", relative)
    current = os.dup(folder)
    try:
        for part in parts[:-1]:
            following = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=current)
            os.close(current)
            current = following
        last = parts[-1] if parts else "."
        return os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=current)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Unsafe(errno.ELOOP, "the path goes through a symlink", relative) from None
        raise
    finally:
        os.close(current)
