"""Per-sandbox control groups: a memory ceiling and a process ceiling for everything inside one sandbox.

A writable cgroup is not always there (containers mount cgroupfs read-only, cgroup v2 needs a
delegated subtree). `SandboxCgroup.create` tries a delegated cgroup v2 subtree first, then the
v1 `memory` and `pids` hierarchies, and reports per limit which one holds it (or none, so the
caller falls back to rlimits). The cgroups are made beside the worker's own, never above it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

_V1_FILES = {"memory": "memory.limit_in_bytes", "pids": "pids.max"}
_V2_FILES = {"memory": "memory.max", "pids": "pids.max"}


@dataclass
class SandboxCgroup:
    """The cgroup directories of one sandbox; `holds` maps "memory"/"pids" to "cgroup2" or "cgroup1"."""

    dirs: list[Path] = field(default_factory=list)
    holds: dict[str, str] = field(default_factory=dict)
    _pids: Path | None = None
    _refusals = 0

    @classmethod
    def create(cls, name: str, *, memory_bytes: int, max_processes: int) -> SandboxCgroup:
        """Make `name` cgroups holding what they can; an empty result means no cgroup is writable here."""
        wanted = {"memory": str(memory_bytes), "pids": str(max_processes)}
        group = cls()
        mounts = _cgroup_mounts()
        own = _own_cgroups()
        v2 = mounts.get("cgroup2")
        if v2 is not None and "" in own:
            parent = _inside(v2, own[""])
            enabled = _read(parent / "cgroup.subtree_control").split() if parent else []
            if parent is not None and {"memory", "pids"} <= set(enabled):
                group._make(parent / name, "cgroup2", {k: (_V2_FILES[k], v) for k, v in wanted.items()})
        for controller, value in wanted.items():
            mount = mounts.get(controller)
            if controller in group.holds or mount is None or controller not in own:
                continue
            parent = _inside(mount, own[controller])
            if parent is not None:
                group._make(parent / name, "cgroup1", {controller: (_V1_FILES[controller], value)})
        return group

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def crowded(self) -> bool:
        """Whether the process limit was hit since the last call (a fork was refused) or 90% of it is in use:
        what a fork bomb leaves. False when no cgroup holds the process count."""
        if self._pids is None:
            return False
        events = _read(self._pids / "pids.events").split()
        refusals = int(events[events.index("max") + 1]) if "max" in events[:-1] else 0
        hit, self._refusals = refusals > self._refusals, refusals
        current, limit = _read(self._pids / "pids.current").strip(), _read(self._pids / "pids.max").strip()
        full = current.isdigit() and limit.isdigit() and int(current) >= 0.9 * int(limit)
        return hit or full

    def kill(self) -> None:
        """SIGKILL every process still in the sandbox's cgroups (they may have left its process group)."""
        for directory in self.dirs:
            if (directory / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    (directory / "cgroup.kill").write_text("1")
                continue
            for pid in _read(directory / "cgroup.procs").split():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)

    def remove(self) -> None:
        """Kill what is left and remove the directories, waiting up to 5 s for the processes to exit."""
        deadline = time.monotonic() + 5
        for directory in self.dirs:
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    self.kill()
                    time.sleep(0.02)
        self.dirs.clear()

    def _make(self, directory: Path, kind: str, limits: dict[str, tuple[str, str]]) -> None:
        try:
            directory.mkdir()
        except OSError:
            return
        held = []
        for controller, (filename, value) in limits.items():
            try:
                (directory / filename).write_text(value)
                held.append(controller)
            except OSError:
                continue
        if not held:
            with contextlib.suppress(OSError):
                directory.rmdir()
            return
        self.dirs.append(directory)
        self.holds.update(dict.fromkeys(held, kind))
        if "pids" in held:
            self._pids = directory


def _cgroup_mounts() -> dict[str, tuple[Path, str]]:
    """Controller ("memory", "pids"; "cgroup2" for the unified tree) → (mount point, root in the hierarchy)."""
    found: dict[str, tuple[Path, str]] = {}
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        left, _, right = line.partition(" - ")
        fields, kinds = left.split(), right.split()
        if len(fields) < 6 or len(kinds) < 3 or "rw" not in fields[5].split(","):
            continue
        root, point = fields[3], Path(fields[4].replace("\\040", " "))
        if kinds[0] == "cgroup2":
            found.setdefault("cgroup2", (point, root))
        elif kinds[0] == "cgroup":
            for option in kinds[2].split(","):
                if option in _V1_FILES:
                    found.setdefault(option, (point, root))
    return found


def _own_cgroups() -> dict[str, str]:
    """Controller → this process's cgroup path in it ("" for the unified tree)."""
    own: dict[str, str] = {}
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def _inside(mount: tuple[Path, str], path: str) -> Path | None:
    point, root = mount
    if root != "/" and not (path == root or path.startswith(root + "/")):
        return None
    relative = path[len(root) :] if root != "/" else path
    directory = point / relative.lstrip("/")
    return directory if os.access(directory, os.W_OK) else None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
