"""The routines on disk, re-read when a file changes (no restart needed)."""

from __future__ import annotations

from pathlib import Path

from app.domain import Routine
from app.errors import RoutineFileError, RoutineNotFound
from app.routines import load_routine


class RoutineCatalog:
    """Routines from `folder`; a changed, added or removed file is picked up on the next call."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._stamp: tuple[tuple[str, float, int], ...] | None = None
        self._routines: dict[str, Routine] = {}
        self.errors: list[RoutineFileError] = []

    def _current_stamp(self) -> tuple[tuple[str, float, int], ...]:
        if not self.folder.is_dir():
            return ()
        files = sorted(self.folder.glob("*.md"))
        return tuple((p.name, p.stat().st_mtime, p.stat().st_size) for p in files)

    def all(self) -> dict[str, Routine]:
        """Every valid routine. A wrong file is left out and its error kept in `errors` (file:line)."""
        stamp = self._current_stamp()
        if stamp != self._stamp:
            self._load()
            self._stamp = stamp
        return self._routines

    def _load(self) -> None:
        routines: dict[str, Routine] = {}
        errors: list[RoutineFileError] = []
        for path in sorted(self.folder.glob("*.md")) if self.folder.is_dir() else []:
            try:
                routine = load_routine(path)
            except RoutineFileError as exc:
                errors.append(exc)
                continue
            if routine.name in routines:
                errors.append(
                    RoutineFileError(
                        str(path),
                        1,
                        f"name {routine.name!r} is used by another file too — give each routine a unique name",
                    )
                )
                continue
            routines[routine.name] = routine
        self._routines, self.errors = routines, errors

    def get(self, name: str) -> Routine:
        routines = self.all()
        if name not in routines:
            known = ", ".join(sorted(routines)) or "none"
            raise RoutineNotFound(f"routine {name!r} does not exist in {self.folder}; known routines: {known}")
        return routines[name]
