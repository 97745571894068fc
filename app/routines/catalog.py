"""The routines: files on disk, re-read when a file changes, and routines created through the API
(kept in Redis, shared by every process; `Services.refresh_routines` brings them in). No restart needed.
A file wins over an API routine of the same name, and the clash is reported in `errors`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from app.core.domain import Routine
from app.core.errors import RoutineFileError, RoutineNotFound
from app.routines.files import load_routine, parse_routine

API_SOURCE = "api:"  # an API routine's `source`: api:<name>


class RoutineCatalog:
    """Routines from `folder`; a changed, added or removed file is picked up on the next call."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._stamp: tuple[tuple[str, float, int], ...] | None = None
        self._routines: dict[str, Routine] = {}
        self._file_errors: list[RoutineFileError] = []
        self._api: dict[str, Routine] = {}
        self._api_errors: list[RoutineFileError] = []
        self._merged: dict[str, Routine] | None = None
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
            self._merged = None
        if self._merged is None:
            self._merge()
        assert self._merged is not None
        return self._merged

    def use_api(self, texts: dict[str, str]) -> None:
        """Replace the API routines with those of `texts` (name → routine file text)."""
        routines: dict[str, Routine] = {}
        errors: list[RoutineFileError] = []
        for name, text in sorted(texts.items()):
            try:
                routines[name] = parse_routine(text, API_SOURCE + name)
            except RoutineFileError as exc:
                errors.append(exc)
        self._api, self._api_errors, self._merged = routines, errors, None

    def is_file(self, name: str) -> bool:
        """Whether `name` is a routine file on disk (those are changed by editing the file, not the API)."""
        self.all()
        return name in self._routines

    def _merge(self) -> None:
        merged = dict(self._api)
        errors = [*self._file_errors, *self._api_errors]
        for name, routine in self._routines.items():
            if name in merged:
                errors.append(
                    RoutineFileError(
                        API_SOURCE + name, 1, f"shadowed by the file {routine.source}; delete one of the two"
                    )
                )
            merged[name] = routine
        self._merged, self.errors = merged, errors

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
        self._routines, self._file_errors = routines, errors

    def get(self, name: str) -> Routine:
        routines = self.all()
        if name not in routines:
            known = ", ".join(sorted(routines)) or "none"
            raise RoutineNotFound(
                f"routine {name!r} does not exist in {self.folder} nor through the API; known routines: {known}"
            )
        return routines[name]


class ApiRoutines:
    """Where API routines live in Redis: a hash name → file text, and a version bumped on each change."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.key = prefix + "routines:api"
        self.version_key = self.key + ":version"
        self._seen: bytes | None = None

    async def refresh(self, catalog: RoutineCatalog) -> None:
        """Bring `catalog` up to date: one GET when nothing changed."""
        version = await self.redis.get(self.version_key)
        if version == self._seen:
            return
        texts = await self.redis.hgetall(self.key) if version is not None else {}  # type: ignore[misc]
        catalog.use_api({k.decode(): v.decode() for k, v in texts.items()})
        self._seen = version

    async def put(self, name: str, text: str) -> bool:
        """Store routine `name`; True when it is new."""
        return await self._change(lambda pipe: pipe.hset(self.key, name, text))

    async def delete(self, name: str) -> bool:
        """Remove routine `name` and its API token (app.store.runs), so a routine made again under that name
        does not answer the old one's token; False when the API has no such routine."""

        def write(pipe: Pipeline) -> None:
            pipe.hdel(self.key, name)
            pipe.delete(f"{self.prefix}token:{name}")

        return await self._change(write)

    async def _change(self, write: Callable[[Pipeline], object]) -> bool:
        """`write` and a version bump in one transaction; whether `write` changed a field."""
        async with self.redis.pipeline(transaction=True) as pipe:
            write(pipe)
            pipe.incr(self.version_key)
            changed, *_ = await pipe.execute()
        return bool(changed)
