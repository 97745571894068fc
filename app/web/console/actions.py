"""The console's forms (POST): log in and out, run a routine now, pause/resume/archive it, rotate its API
token, message or cancel a run, set or delete a secret. Each checks the session and its CSRF token, does
what the API would (app.web.operations), and answers with a redirect that says what happened."""

from __future__ import annotations

import logging
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from app.core.errors import ConfigError, NotAllowed, Refused, RoutineNotFound, RunNotFound
from app.store.routine_states import ACTIVE, ARCHIVED, PAUSED, RoutineStates
from app.store.vault import SecretNotFound, VaultError
from app.web.console import session
from app.web.console.pages import render, routine_page, services_of
from app.web.operations import cancel, fire_now, send_message

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 64 * 1024
MAX_TEXT_CHARS = 20_000
_STATES = {"pause": PAUSED, "resume": ACTIVE, "archive": ARCHIVED}


def back(path: str, *, ok: str | None = None, error: str | None = None) -> RedirectResponse:
    query = f"?ok={quote(ok)}" if ok else f"?error={quote(error)}" if error else ""
    return RedirectResponse(path + query, status_code=303)


async def _form(request: Request) -> FormData | Response:
    """The form, once the session and its CSRF token are checked (403 otherwise)."""
    settings = services_of(request).settings
    length = request.headers.get("content-length") or "0"
    if not length.isdigit() or int(length) > MAX_FORM_BYTES:
        too_large = "The form is too large."
        return render(request, "message.html", "", status=413, title="Too large", text=too_large, back="/")
    form = await request.form(max_files=0, max_fields=20)
    csrf = form.get("csrf")
    if settings.api_token is None or not session.csrf_ok(request, settings, csrf if isinstance(csrf, str) else ""):
        why = (
            "Set ROUTINES_API_TOKEN and log in to act from the console."
            if settings.api_token is None
            else "This form has expired or did not come from this console; reload the page and try again."
        )
        return render(request, "message.html", "", status=403, title="Not allowed", text=why, back="/")
    return form


def _text(form: FormData, key: str) -> str:
    value = form.get(key)
    return value.strip() if isinstance(value, str) else ""


async def login_form(request: Request) -> Response:
    settings = services_of(request).settings
    if settings.api_token is None:
        return back("/")
    return render(request, "login.html", "", next=session.safe_next(request.query_params.get("next")))


async def login(request: Request) -> Response:
    settings = services_of(request).settings
    form = await request.form(max_files=0, max_fields=5)
    target = session.safe_next(_text(form, "next"))
    if settings.api_token is None:
        return back("/")
    if not session.token_matches(settings, _text(form, "token")):
        log.warning("console: a login with a wrong token from %s", request.client.host if request.client else "?")
        return render(request, "login.html", "", status=401, next=target, flashes=[("error", "That is not the token.")])
    response = RedirectResponse(target, status_code=303)
    session.start_session(settings, response)
    return response


async def logout(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    response = RedirectResponse("/login", status_code=303)
    session.end_session(services_of(request).settings, response)
    return response


async def fire(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    services = services_of(request)
    name = request.path_params["name"]
    here = f"/routines/{name}"
    await services.refresh_routines()
    try:
        routine = services.catalog.get(name)
    except RoutineNotFound as exc:
        return back("/routines", error=str(exc))
    if not routine.on.api:
        return back(here, error=f"{name} has no api trigger; add `api: true` under `on:` in {routine.source}")
    text = _text(form, "text")[:MAX_TEXT_CHARS] or None
    try:
        run = await fire_now(services, routine, text=text, repo=_text(form, "repo") or None, actor="console")
    except Refused as exc:
        return back(f"/runs/{exc.run.id}" if exc.run else here, error=str(exc))
    except (NotAllowed, ConfigError) as exc:
        return back(here, error=str(exc))
    return back(f"/runs/{run.id}", ok=f"{name} is running")


async def change_state(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    services = services_of(request)
    name, action = request.path_params["name"], request.path_params["action"]
    if action not in _STATES:
        return back(f"/routines/{name}", error=f"unknown action {action!r}")
    await services.refresh_routines()
    try:
        services.catalog.get(name)
    except RoutineNotFound as exc:
        return back("/routines", error=str(exc))
    state = await RoutineStates(services.store.redis, services.store.prefix).set(name, _STATES[action], by="console")
    return back(f"/routines/{name}", ok=f"{name} is {state.state}")


async def rotate_token(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    services = services_of(request)
    name = request.path_params["name"]
    await services.refresh_routines()
    try:
        routine = services.catalog.get(name)
    except RoutineNotFound as exc:
        return back("/routines", error=str(exc))
    token = await services.store.new_routine_token(name, routine.repos)
    return await routine_page(request, new_token=token)  # shown once, on this answer only


async def message(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    services = services_of(request)
    run_id = request.path_params["run_id"]
    text = _text(form, "text")[:MAX_TEXT_CHARS]
    try:
        run = await services.store.get_run(run_id)
    except RunNotFound as exc:
        return back("/runs", error=str(exc))
    if not text:
        return back(f"/runs/{run_id}", error="write the message first")
    if run.state.terminal:
        return back(f"/runs/{run_id}", error=f"the run already ended ({run.state.value})")
    await send_message(services, run, text)
    return back(f"/runs/{run_id}", ok="sent; the model reads it at its next turn")


async def cancel_run(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    services = services_of(request)
    run_id = request.path_params["run_id"]
    try:
        run = await services.store.get_run(run_id)
    except RunNotFound as exc:
        return back("/runs", error=str(exc))
    if run.state.terminal:
        return back(f"/runs/{run_id}", error=f"the run already ended ({run.state.value})")
    await cancel(services, run)
    return back(f"/runs/{run_id}", ok="cancel requested: the run stops before its next model turn")


async def set_secret(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    vault = services_of(request).vault()
    if vault is None:
        return back("/secrets", error="set ROUTINES_SECRET_KEY to enable the vault")
    name, value = _text(form, "name"), form.get("value")
    domains = [d.strip() for d in _text(form, "domains").split(",") if d.strip()]
    if not isinstance(value, str) or not value:
        return back("/secrets", error="give the secret a value")
    try:
        info = await vault.set(name, value, domains)
    except VaultError as exc:
        return back("/secrets", error=str(exc))
    return back("/secrets", ok=f"{info.name} is set")


async def delete_secret(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    vault = services_of(request).vault()
    name = request.path_params["name"]
    if vault is None:
        return back("/secrets", error="set ROUTINES_SECRET_KEY to enable the vault")
    try:
        deleted = await vault.delete(name)
    except SecretNotFound:
        deleted = False
    return back("/secrets", ok=f"{name} is deleted") if deleted else back("/secrets", error=f"no secret {name!r}")


routes = [
    Route("/login", login_form),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/routines/{name}/fire", fire, methods=["POST"]),
    Route("/routines/{name}/token", rotate_token, methods=["POST"]),
    Route("/routines/{name}/{action}", change_state, methods=["POST"]),
    Route("/runs/{run_id}/message", message, methods=["POST"]),
    Route("/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/secrets", set_secret, methods=["POST"]),
    Route("/secrets/{name}/delete", delete_secret, methods=["POST"]),
]
