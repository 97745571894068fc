"""The HTTP API: fire routines, read runs and follow their event logs."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.core.domain import Event, Routine, Run, RunState
from app.core.errors import ConfigError, NotAllowed, Refused, RoutineNotFound, RunNotFound, StoreError
from app.services import Services
from app.store.archive import run_events as run_events_of
from app.store.quotas import Quotas
from app.store.routine_states import RoutineState, RoutineStates
from app.web.console.session import viewer as console_viewer
from app.web.operations import cancel, fire_now, send_message

log = logging.getLogger(__name__)

MAX_FIRE_BODY_BYTES = 64 * 1024
MAX_TEXT_CHARS = 20_000


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def services_of(request: Request) -> Services:
    services: Services = request.state.services
    return services


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def is_admin(services: Services, token: str | None) -> bool:
    expected = services.settings.api_token
    return bool(token and expected and hmac.compare_digest(token.encode(), expected.encode()))


def _may_read(request: Request) -> bool:
    """Reads are open when no ROUTINES_API_TOKEN is set (local use), else they need it as a bearer token,
    or a console session (a SameSite=Strict cookie: the console's pages read runs and events this way)."""
    services = services_of(request)
    if services.settings.api_token is None or is_admin(services, bearer_token(request)):
        return True
    return console_viewer(request, services.settings).logged_in


def run_json(services: Services, run: Run) -> dict[str, Any]:
    data = run.to_json()
    data["url"] = services.settings.run_url(run.id)
    data["events_url"] = f"{services.settings.base_url}/api/runs/{run.id}/events"
    return data


def routine_json(routine: Routine) -> dict[str, Any]:
    return {
        "name": routine.name,
        "description": routine.description,
        "repo": routine.repo if isinstance(routine.repo, str) else list(routine.repo),
        "triggers": {
            "api": routine.on.api,
            "schedule": [{"cron": s.cron, "timezone": s.timezone} for s in routine.on.schedule],
            "github": sorted(routine.on.github),
        },
        "model": routine.model,
        "source": routine.source,
    }


async def fire_routine(request: Request) -> Response:
    services = services_of(request)
    name = request.path_params["name"]
    token = bearer_token(request)
    if token is None:
        return error(401, "missing bearer token; send `Authorization: Bearer <token>` (see `routines token NAME`)")
    await services.refresh_routines()
    try:
        routine = services.catalog.get(name)
    except RoutineNotFound as exc:
        return error(404, str(exc)) if is_admin(services, token) else error(401, "invalid token")
    if not (is_admin(services, token) or await services.store.check_routine_token(name, token, routine.repos)):
        return error(401, f"invalid token for routine {name!r}; create one with `routines token {name}`")
    if not routine.on.api:
        return error(422, f"routine {name!r} has no api trigger; add `api: true` under `on:` in {routine.source}")
    payload = await _fire_payload(request)
    if isinstance(payload, Response):
        return payload
    try:
        run = await fire_now(services, routine, text=payload.get("text"), repo=payload.get("repo"), actor="api")
    except NotAllowed as exc:
        log.warning("fire of %s refused: %s", name, exc)
        return error(403, str(exc))
    except Refused as exc:
        return error(exc.status, str(exc), limit=exc.limit, **({"run_id": exc.run.id} if exc.run else {}))
    except ConfigError as exc:
        return error(422, str(exc))
    return JSONResponse(
        {"run_id": run.id, "url": services.settings.run_url(run.id), "state": run.state.value}, status_code=202
    )


async def _fire_payload(request: Request) -> dict[str, Any] | Response:
    body = await request.body()
    if len(body) > MAX_FIRE_BODY_BYTES:
        return error(413, f"body is over {MAX_FIRE_BODY_BYTES} bytes; send a shorter `text`")
    if not body.strip():
        return {}
    try:
        payload = json.loads(body)
    except ValueError as exc:
        return error(400, f'body is not JSON ({exc}); send {{"text": "..."}} or nothing')
    if not isinstance(payload, dict):
        return error(422, 'body must be a JSON object such as {"text": "..."}')
    text = payload.get("text")
    if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT_CHARS):
        return error(422, f"`text` must be a string of at most {MAX_TEXT_CHARS} characters")
    repo = payload.get("repo")
    if repo is not None and not isinstance(repo, str):
        return error(422, "`repo` must be a string such as owner/name")
    return payload


async def list_routines(request: Request) -> Response:
    if not _may_read(request):
        return error(401, "this needs ROUTINES_API_TOKEN as a bearer token")
    services = services_of(request)
    await services.refresh_routines()
    routines = services.catalog.all()
    states = await RoutineStates(services.store.redis, services.store.prefix).all()
    counts = await Quotas(services.store.redis, services.store.prefix).runs_today(routines)
    return JSONResponse(
        {
            "routines": [
                {
                    **routine_json(r),
                    **states.get(name, RoutineState()).to_json(),
                    "runs_today": counts.get(name, 0),
                    "runs_per_day": r.limits.runs_per_day,
                }
                for name, r in routines.items()
            ],
            "errors": [str(e) for e in services.catalog.errors],
        }
    )


async def list_runs(request: Request) -> Response:
    if not _may_read(request):
        return error(401, "this needs ROUTINES_API_TOKEN as a bearer token")
    services = services_of(request)
    q = request.query_params
    state = q.get("state")
    if state is not None and state not in {s.value for s in RunState}:
        return error(422, f"unknown state {state!r}; use one of {', '.join(s.value for s in RunState)}")
    try:
        limit = min(max(int(q.get("limit", "50")), 1), 200)
    except ValueError:
        return error(422, "`limit` must be a whole number between 1 and 200")
    runs = await services.store.list_runs(routine=q.get("routine"), state=state, limit=limit, before=q.get("before"))
    body: dict[str, Any] = {"runs": [run_json(services, r) for r in runs]}
    if len(runs) == limit:
        body["next"] = f"/api/runs?{_query(q, before=runs[-1].id)}"
    return JSONResponse(body)


def _query(params: Any, **override: str) -> str:
    merged = {k: v for k, v in params.items() if k != "before"}
    merged.update(override)
    return urlencode(merged)


async def get_run(request: Request) -> Response:
    if not _may_read(request):
        return error(401, "this needs ROUTINES_API_TOKEN as a bearer token")
    services = services_of(request)
    try:
        run = await services.store.get_run(request.path_params["run_id"])
    except RunNotFound as exc:
        return error(404, str(exc))
    return JSONResponse(run_json(services, run))


async def run_events(request: Request) -> Response:
    if not _may_read(request):
        return error(401, "this needs ROUTINES_API_TOKEN as a bearer token")
    services = services_of(request)
    run_id = request.path_params["run_id"]
    try:
        run = await services.store.get_run(run_id)
    except RunNotFound as exc:
        return error(404, str(exc))
    after = request.query_params.get("after") or request.headers.get("last-event-id") or "0-0"
    accept = request.headers.get("accept", "")
    wants_json = "application/json" in accept and "text/event-stream" not in accept
    archived: list[Event] | None = None
    if run.archived:
        try:
            archived = [e for e in await run_events_of(services.store, run) if _stream_id(e.id) > _stream_id(after)]
        except StoreError as exc:
            return error(410, f"run {run_id}'s events were archived to {run.archived}, which cannot be read: {exc}")
    if wants_json or request.query_params.get("format") == "json":
        events = archived if archived is not None else await services.store.events(run_id, after=after)
        return JSONResponse({"run_id": run_id, "events": [e.to_json() for e in events]})
    return StreamingResponse(
        _replay(archived) if archived is not None else _sse(services, run_id, after),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def _stream_id(value: str) -> tuple[int, int]:
    """A Redis stream id (`<ms>-<seq>`) as numbers, for ordering; anything else sorts first."""
    ms, _, seq = value.partition("-")
    return (int(ms), int(seq or 0)) if ms.isdigit() and (seq or "0").isdigit() else (-1, -1)


def _frame(event: Event) -> bytes:
    return f"id: {event.id}\ndata: {json.dumps(event.to_json())}\n\n".encode()


async def _sse(services: Services, run_id: str, after: str) -> AsyncIterator[bytes]:
    event: Event
    async for event in services.store.follow(run_id, after=after):
        yield _frame(event)
    yield b"event: end\ndata: {}\n\n"


async def _replay(events: list[Event]) -> AsyncIterator[bytes]:
    for event in events:
        yield _frame(event)
    yield b"event: end\ndata: {}\n\n"


async def healthz(request: Request) -> Response:
    services = services_of(request)
    try:
        await services.store.ping()
    except StoreError as exc:
        return JSONResponse({"ok": False, "redis": str(exc)}, status_code=503)
    return JSONResponse({"ok": True})


routes = [
    Route("/healthz", healthz),
    Route("/api/routines", list_routines),
    Route("/api/routines/{name}/fire", fire_routine, methods=["POST"]),
    Route("/api/runs", list_runs),
    Route("/api/runs/{run_id}", get_run),
    Route("/api/runs/{run_id}/events", run_events),
]


async def _live_run(request: Request) -> Run | Response:
    services = services_of(request)
    if not is_admin(services, bearer_token(request)):
        return error(401, "steering a run needs ROUTINES_API_TOKEN as a bearer token")
    try:
        run = await services.store.get_run(request.path_params["run_id"])
    except RunNotFound as exc:
        return error(404, str(exc))
    if run.state.terminal:
        return error(409, f"run {run.id} already ended ({run.state.value})")
    return run


async def message_run(request: Request) -> Response:
    """Add a message the model sees at its next turn."""
    run = await _live_run(request)
    if isinstance(run, Response):
        return run
    payload = await _fire_payload(request)
    if isinstance(payload, Response):
        return payload
    text = payload.get("text")
    if not text:
        return error(422, 'send {"text": "..."}: the message for the model')
    await send_message(services_of(request), run, text)
    return JSONResponse({"run_id": run.id, "state": run.state.value, "queued": True}, status_code=202)


async def cancel_run(request: Request) -> Response:
    """Stop a run: a queued one ends now, a running one before its next model turn (partial work delivered)."""
    run = await _live_run(request)
    if isinstance(run, Response):
        return run
    run = await cancel(services_of(request), run)
    return JSONResponse({"run_id": run.id, "state": run.state.value}, status_code=202)


routes += [
    Route("/api/runs/{run_id}/messages", message_run, methods=["POST"]),
    Route("/api/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
]
