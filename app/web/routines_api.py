"""Routine lifecycle over HTTP: pause, resume, archive (admin bearer token), and the fields GET /api/routines shows."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.core.errors import Refused, RoutineConflict, RoutineFileError, RoutineNotFound
from app.routines import admin as routine_admin
from app.routines.admin import MAX_ROUTINE_BYTES
from app.routines.catalog import API_SOURCE
from app.routines.files import parse_routine
from app.services import Services
from app.store.routine_states import ACTIVE, ARCHIVED, PAUSED, RoutineStates
from app.web.api import bearer_token, error, is_admin, routine_json, services_of

_STATES = {"pause": PAUSED, "resume": ACTIVE, "archive": ARCHIVED}


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
    await services.refresh_routines()
    try:
        services.catalog.get(name)
    except RoutineNotFound as exc:
        return error(404, str(exc))
    state = await RoutineStates(services.store.redis, services.store.prefix).set(name, _STATES[action], by="api")
    return JSONResponse({"name": name, **state.to_json()})


def _admin_refusal(services: Services, request: Request, what: str) -> Response | None:
    if services.settings.api_token is None:
        return error(403, f"set ROUTINES_API_TOKEN to {what} routines over the API")
    if not is_admin(services, bearer_token(request)):
        return error(401, "this needs ROUTINES_API_TOKEN as a bearer token")
    return None


async def put_routine(request: Request) -> Response:
    """PUT /api/routines/{name}: create or replace a routine from its file text (the body, UTF-8).

    Checked like a file (errors as `api:<name>:line: what — how to fix`), kept in Redis, and picked
    up by every web process and worker without a restart. Routines from files are changed on disk.
    """
    services = services_of(request)
    refused = _admin_refusal(services, request, "create or change")
    if refused is not None:
        return refused
    name = request.path_params["name"]
    body = await request.body()
    if len(body) > MAX_ROUTINE_BYTES:
        return error(413, f"a routine is at most {MAX_ROUTINE_BYTES} bytes; this one is {len(body)}")
    try:
        text = body.decode()
        routine = parse_routine(text, API_SOURCE + name)
    except UnicodeDecodeError:
        return error(400, "the body is not UTF-8; send the routine file's text")
    except RoutineFileError as exc:
        return error(400, str(exc))
    if routine.name != name:
        return error(
            400, f"the routine is named {routine.name!r} but was sent to /api/routines/{name}; make them match"
        )
    try:
        created = await routine_admin.put_routine(services, routine, text)
    except RoutineConflict as exc:
        return error(409, str(exc))
    return JSONResponse({**routine_json(routine), "created": created}, status_code=201 if created else 200)


async def delete_routine(request: Request) -> Response:
    """DELETE /api/routines/{name}: remove a routine created through the API (its runs stay)."""
    services = services_of(request)
    refused = _admin_refusal(services, request, "delete")
    if refused is not None:
        return refused
    name = request.path_params["name"]
    try:
        await routine_admin.delete_routine(services, name)
    except RoutineConflict as exc:
        return error(409, str(exc))
    except RoutineNotFound as exc:
        return error(404, str(exc))
    return JSONResponse({"name": name, "deleted": True})


async def pause(request: Request) -> Response:
    return await change_state(request, "pause")


async def resume(request: Request) -> Response:
    return await change_state(request, "resume")


async def archive(request: Request) -> Response:
    return await change_state(request, "archive")


routes = [
    Route("/api/routines/{name}", put_routine, methods=["PUT"]),
    Route("/api/routines/{name}", delete_routine, methods=["DELETE"]),
    Route("/api/routines/{name}/pause", pause, methods=["POST"]),
    Route("/api/routines/{name}/resume", resume, methods=["POST"]),
    Route("/api/routines/{name}/archive", archive, methods=["POST"]),
]
