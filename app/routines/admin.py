"""Routines kept in Redis, created or replaced from a routine file's text (`PUT /api/routines/{name}`,
`routines apply FILE`) and deleted (`DELETE /api/routines/{name}`, `routines delete NAME`).

They are checked like files and picked up by every web process and worker without a restart. A
routine file of the same name wins, and files are never changed this way (RoutineConflict).
"""

from __future__ import annotations

from typing import Protocol

from app.core.domain import Routine
from app.core.errors import RoutineConflict, RoutineNotFound
from app.routines.catalog import ApiRoutines, RoutineCatalog


class Routines(Protocol):
    """Where routines are kept: the files and API routines together, and the API routines alone."""

    @property
    def catalog(self) -> RoutineCatalog: ...

    @property
    def api_routines(self) -> ApiRoutines: ...

    async def refresh_routines(self) -> None:
        """Bring in what other processes changed."""
        ...

MAX_ROUTINE_BYTES = 256 * 1024


async def put_routine(services: Routines, routine: Routine, text: str) -> bool:
    """Keep `text` (which parsed as `routine`) under the routine's name; True when it is new."""
    await services.refresh_routines()
    if services.catalog.is_file(routine.name):
        source = services.catalog.get(routine.name).source
        raise RoutineConflict(f"routine {routine.name!r} is the file {source}; change the file, or pick another name")
    created = await services.api_routines.put(routine.name, text)
    await services.refresh_routines()
    return created


async def delete_routine(services: Routines, name: str) -> None:
    """Remove a routine kept in Redis (its runs stay)."""
    await services.refresh_routines()
    if services.catalog.is_file(name):
        raise RoutineConflict(f"routine {name!r} is the file {services.catalog.get(name).source}; delete the file")
    if not await services.api_routines.delete(name):
        raise RoutineNotFound(f"no routine {name!r} was created through the API or `routines apply`")
    await services.refresh_routines()
