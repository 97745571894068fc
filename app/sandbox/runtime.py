"""What starts a hands process (app.hands): the worker's own Python, pygit2 beside it, and the command.

The hands process runs the worker's interpreter in isolated mode (`-I -S -B`: no site-packages, no
environment variables, no bytecode written) with only `app/hands` and pygit2 (with its bundled
libraries and cffi's backend) on its path. Inside bubblewrap those are bound read-only under
`LIB_INSIDE`, and the interpreter's own prefix where the sandbox does not already see it, with its
site-packages masked: the sandbox gains the standard library and pygit2, nothing of the worker's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

import app.hands

LIB_INSIDE = "/run/routines/lib"
_BOOTSTRAP = (
    "import importlib,sys;sys.path[:0]=sys.argv[3:];sys.exit(importlib.import_module(sys.argv[2]).main(sys.argv))"
)


@dataclass(frozen=True)
class Runtime:
    """How to start the hands process: interpreter, module, extra sys.path entries, and read-only binds."""

    python: str
    module: str
    paths: tuple[str, ...]
    binds: tuple[tuple[str, str], ...] = ()
    prefix: str = ""
    launcher: tuple[str, ...] = ()  # words before `python` (a dynamic loader, inside an image root)


def local_runtime() -> Runtime:
    """The hands process as a plain child of the worker (the local sandbox)."""
    package = Path(app.hands.__file__).resolve().parent
    paths = [str(package.parent.parent), *_library_dirs()]
    return Runtime(sys.executable, "app.hands.server", tuple(dict.fromkeys(paths)))


def sandbox_runtime() -> Runtime:
    """The hands process inside bubblewrap: its files bound under LIB_INSIDE, the interpreter at its own path."""
    package = Path(app.hands.__file__).resolve().parent
    binds = [(str(package), f"{LIB_INSIDE}/hands")]
    pygit2_dir = Path(pygit2.__file__).resolve().parent
    binds.append((str(pygit2_dir), f"{LIB_INSIDE}/pygit2"))
    bundled = pygit2_dir.with_name("pygit2.libs")
    if bundled.is_dir():
        binds.append((str(bundled), f"{LIB_INSIDE}/pygit2.libs"))
    backend = _cffi_backend()
    binds.append((str(backend), f"{LIB_INSIDE}/{backend.name}"))
    python = os.path.realpath(sys.executable)
    return Runtime(python, "hands.server", (LIB_INSIDE,), tuple(binds), os.path.realpath(sys.base_prefix))


def hands_argv(runtime: Runtime, config: dict[str, Any]) -> list[str]:
    """The command line of a hands process with `config` (see app.hands.server)."""
    python = [*runtime.launcher, runtime.python]
    return [*python, "-I", "-S", "-B", "-c", _BOOTSTRAP, json.dumps(config), runtime.module, *runtime.paths]


def _library_dirs() -> list[str]:
    pygit2_parent = Path(pygit2.__file__).resolve().parent.parent
    return [str(pygit2_parent), str(_cffi_backend().parent)]


def _cffi_backend() -> Path:
    """cffi's compiled backend, which pygit2 loads (found without importing it)."""
    spec = importlib.util.find_spec("_cffi_backend")
    if spec is None or spec.origin is None:
        raise ImportError("cffi's _cffi_backend is not installed; pygit2 needs it (pip install cffi)")
    return Path(spec.origin).resolve()


def alternates(workdir: Path) -> list[str]:
    """The object folders a checkout at `workdir` borrows (its `.git/objects/info/alternates`).

    Read when the sandbox is made, before any command of the agent ran, so the host wrote it."""
    git = workdir / ".git"
    if not git.is_dir() or git.is_symlink():
        return []
    listed = git / "objects" / "info" / "alternates"
    lines = listed.read_text().splitlines() if listed.is_file() and not listed.is_symlink() else []
    found = []
    for line in (text.strip() for text in lines):
        if line and not line.startswith("#"):
            path = (git / "objects" / line).resolve()
            if path.is_dir() and not path.is_relative_to(workdir):
                found.append(str(path))
    return found
