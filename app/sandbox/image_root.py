"""An OCI image's filesystem as the sandbox's root, and the worker's own tools beside it.

The image root is assembled on an empty tmpfs: each top-level entry of the unpacked image is bound
read-only (folders), recreated (symlinks) or bound (files), so the shared image copy is never written
and the sandbox's own mount points (`/run/routines/...`, the workspace's path, `/tmp`, `$HOME`) live in
the tmpfs. Nothing of the host's `/usr`, `/etc` or `/home` is at its usual place.

The sandbox still needs a few of the worker's own programs whatever the image holds — bash for the
agent's shell, socat for the way to the egress proxy, Python for the hands process. The host's `/usr`
(and `/lib*` where they are real folders) is bound read-only under `HOST_INSIDE`, and those programs
run through the host's dynamic loader with the host's library folders, so they never load a library of
the image and the image's programs never load one of the host. The run's CA bundle is bound over the
image's trust store files where it has them.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.core.errors import SandboxError
from app.sandbox.runtime import Runtime

HOST_INSIDE = "/run/routines/host"
# Created in the tmpfs by the sandbox itself, never bound from the image
_OWN = frozenset({"proc", "dev", "tmp", "run", "sys"})
TRUST_STORES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # Alpine, macOS-like
    "/etc/ssl/ca-bundle.pem",  # openSUSE
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageRoot:
    """The unpacked image to use as `/`, and the variables its config sets (PATH among them)."""

    rootfs: Path
    env: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> str:
        return dict(self.env).get("PATH") or DEFAULT_PATH


@dataclass(frozen=True)
class HostTools:
    """How to run one of the worker's programs inside an image root (see the module docstring)."""

    loader: str
    library_path: tuple[str, ...]
    binds: tuple[tuple[str, str], ...]

    def inside(self, host_path: str) -> str:
        """Where the sandbox sees the host file `host_path`."""
        real = os.path.realpath(host_path)
        for host, inside in self.binds:
            if real == host or real.startswith(host + "/"):
                return inside + real[len(host) :]
        return real  # bound at its own path by the caller (e.g. a Python prefix outside /usr)

    def command(self, host_path: str, *, libraries: Sequence[str] = ()) -> list[str]:
        """The words that run the host's `host_path` inside: the loader, the libraries first, the program."""
        libs = [*libraries, *self.library_path]
        return [self.loader, "--library-path", ":".join(libs), self.inside(host_path)]

    def program(self, name: str) -> list[str]:
        found = _which(name)
        if found is None:
            raise SandboxError(f"{name} is not installed on the worker; apt-get install {name}")
        return self.command(found)


def _which(name: str) -> str | None:
    for folder in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@functools.cache
def host_tools() -> HostTools:
    binds = [("/usr", f"{HOST_INSIDE}/usr")]
    for top in ("/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.isdir(top) and not os.path.islink(top):
            binds.append((top, f"{HOST_INSIDE}{top}"))
    loaders = sorted(glob.glob("/lib*/ld-linux*.so.*") + glob.glob("/usr/lib*/ld-linux*.so.*"))
    loaders += sorted(glob.glob("/lib*/*/ld-linux*.so.*") + glob.glob("/usr/lib/*/ld-linux*.so.*"))
    if not loaders:
        raise SandboxError("the worker's dynamic loader (ld-linux) was not found; image roots need a glibc host")
    view = HostTools("", (), tuple(binds))
    folders = []
    for pattern in ("/usr/lib/*-linux-gnu", "/lib/*-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib"):
        for folder in sorted(glob.glob(pattern)):
            real = os.path.realpath(folder)
            if os.path.isdir(real) and real not in folders:
                folders.append(real)
    return HostTools(view.inside(loaders[0]), tuple(view.inside(f) for f in folders), tuple(binds))


def root_mounts(root: ImageRoot, tools: HostTools, keep: Sequence[str] = ()) -> list[str]:
    """bwrap arguments that make `root` the sandbox's `/` (on a tmpfs) and put the host's tools beside it.

    `keep` are the paths the sandbox mounts its own things at (the workspace, $HOME, the hands' Python):
    a folder of the image on the way to one is recreated in the tmpfs with its other entries bound one by
    one, so the mount point can be made there without writing to the shared image."""
    rootfs = root.rootfs
    if not rootfs.is_dir():
        raise SandboxError(f"the image root {rootfs} is missing; the image must be pulled again")
    own = [f"/{name}" for name in _OWN]
    wanted = [os.path.normpath(k) for k in keep if not any(k == o or k.startswith(o + "/") for o in own)]
    args = ["--tmpfs", "/", *_entries(str(rootfs), "", wanted, top=True)]
    for host, inside in tools.binds:
        args += ["--ro-bind", host, inside]
    return args


def _entries(folder: str, inside: str, keep: list[str], *, top: bool = False) -> list[str]:
    args: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name, path = entry.name, f"{inside}/{entry.name}"
        if top and name in _OWN:
            continue
        below = [k for k in keep if k.startswith(path + "/")]
        if path in keep:
            if entry.is_dir(follow_symlinks=False):
                args += ["--dir", path]  # mounted over; nothing of the image's folder shows
        elif below:
            # On the way to a mount point: a folder of our own (an image symlink here is shadowed).
            args += ["--dir", path]
            if entry.is_dir(follow_symlinks=False):
                args += _entries(entry.path, path, below)
        elif entry.is_symlink():
            args += ["--symlink", os.readlink(entry.path), path]
        elif entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
            args += ["--ro-bind", entry.path, path]
    return args


_ONE_PATH = frozenset({"--tmpfs", "--dir", "--proc", "--dev", "--mqueue", "--remount-ro"})
_TWO_PATHS = frozenset({"--bind", "--ro-bind", "--dev-bind", "--bind-try", "--ro-bind-try", "--symlink"})
_ONE_VALUE = frozenset({"--size", "--perms", "--chdir"})


def mount_points(args: Sequence[str]) -> list[str]:
    """Where the bwrap mount arguments `args` mount something inside the sandbox."""
    points, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in _TWO_PATHS:
            points.append(args[i + 2])
            i += 3
        elif arg in _ONE_PATH:
            points.append(args[i + 1])
            i += 2
        elif arg in _ONE_VALUE:
            i += 2
        else:
            i += 1
    return [p for p in points if p != "/"]


def trust_mounts(rootfs: Path, bundle: Path) -> list[str]:
    """Bind the run's CA bundle over the image's trust store files (where the image has them)."""
    args: list[str] = []
    for store in TRUST_STORES:
        target = rootfs / store.lstrip("/")
        if target.is_file() and not target.is_symlink():
            args += ["--ro-bind", str(bundle), store]
    return args


def image_runtime(runtime: Runtime, tools: HostTools) -> tuple[Runtime, list[str]]:
    """The hands runtime inside an image root: Python through the host's loader (its prefix's libraries
    first), and the binds its prefix needs when it is not under the host's /usr."""
    words, binds = host_python(runtime, tools)
    launcher, python = tuple(words[:-1]), words[-1]
    mounts = [*binds, *[arg for host, inside in runtime.binds for arg in ("--ro-bind", host, inside)]]
    prefix = os.path.realpath(runtime.prefix) if runtime.prefix else ""
    return Runtime(python, runtime.module, runtime.paths, runtime.binds, prefix, launcher), mounts


def host_python(runtime: Runtime, tools: HostTools) -> tuple[list[str], list[str]]:
    """The words that run the worker's Python inside an image root (through the host's loader, its
    prefix's libraries first), and the binds its prefix needs when it is not under the host's /usr
    (site-packages masked: only the standard library)."""
    prefix = os.path.realpath(runtime.prefix) if runtime.prefix else ""
    binds: list[str] = []
    if prefix and tools.inside(prefix) == prefix:  # outside the host tree: bind it at its own path
        binds += ["--ro-bind", prefix, prefix]
        for site in sorted(glob.glob(f"{prefix}/lib/python3*/site-packages")):
            binds += ["--tmpfs", site]
    libraries = [tools.inside(f"{prefix}/lib")] if prefix else []
    return tools.command(runtime.python, libraries=libraries), binds
