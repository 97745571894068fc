"""Routine lifecycle over HTTP: pause, resume, archive (admin bearer token), and the fields GET /api/routines shows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.domain import Routine
from app.errors import RoutineNotFound
from app.lifecycle import ACTIVE, ARCHIVED, PAUSED, Lifecycle, Refused
from app.services import Services
from app.web.api import bearer_token, error, is_admin, services_of

_STATES = {"pause": PAUSED, "resume": ACTIVE, "archive": ARCHIVED}


def lifecycle(services: Services) -> Lifecycle:
    return Lifecycle(services.store.redis, services.store.prefix)


async def lifecycle_fields(services: Services, routines: Iterable[Routine]) -> dict[str, dict[str, Any]]:
    """By routine name, the fields to merge into `routine_json`: state, since, by, runs_today, runs_per_day."""
    cap = services.settings.max_runs_per_day
    return await lifecycle(services).describe(routines, cap)


def refusal(exc: Refused) -> JSONResponse:
    """The API answer for a refused run: 409 (paused, archived) or 429 (a daily quota), naming the limit."""
    extra: dict[str, Any] = {"limit": exc.limit}
    if exc.run is not None:
        extra.update(run_id=exc.run.id, state=exc.run.state.value)
    return error(exc.status, str(exc), **extra)


async def change_state(request: Request, action: str) -> Response:
    """POST /api/routines/{name}/{pause|resume|archive} with `Authorization: Bearer <ROUTINES_API_TOKEN>`."""
    services = services_of(request)
    if services.settings.api_token is None:
        return error(403, "set ROUTINES_API_TOKEN to pause, resume or archive routines over the API")
    if not is_admin(services, bearer_token(request)):
        return error(401, "this needs ROUTINES_API_TOKEN as a bearer token")
    name = request.path_params["name"]
    try:
        services.catalog.get(name)
    except RoutineNotFound as exc:
        return error(404, str(exc))
    state = await lifecycle(services).set_state(name, _STATES[action], by="api")
    return JSONResponse({"name": name, **state.to_json()})


async def pause(request: Request) -> Response:
    return await change_state(request, "pause")


async def resume(request: Request) -> Response:
    return await change_state(request, "resume")


async def archive(request: Request) -> Response:
    return await change_state(request, "archive")


routes = [
    Route("/api/routines/{name}/pause", pause, methods=["POST"]),
    Route("/api/routines/{name}/resume", resume, methods=["POST"]),
    Route("/api/routines/{name}/archive", archive, methods=["POST"]),
]
