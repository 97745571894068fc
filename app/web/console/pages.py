"""The console's pages (GET): dashboard, routines, a routine, runs, a run, deliveries, secrets, health.

Every page needs a session when ROUTINES_API_TOKEN is set (else it is readable like the API's reads).
Templates autoescape everything; the pages allow scripts and styles from this origin only (CSP)."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from app.core.errors import RoutineNotFound, RunNotFound
from app.services import Services
from app.store.delivery_log import DeliveryLog
from app.triggers.tracking import tracking_key
from app.web.console import views
from app.web.console.session import Viewer, needs_login, viewer

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
_templates = Environment(
    loader=PackageLoader("app.web", "templates"), autoescape=select_autoescape(default=True), enable_async=False
)
_templates.globals.update(when=views.when, duration=views.duration)


def services_of(request: Request) -> Services:
    services: Services = request.state.services
    return services


def render(
    request: Request, template: str, section: str, *, status: int = 200, flashes: list[tuple[str, str]] | None = None,
    **context: Any,
) -> HTMLResponse:  # fmt: skip
    services = services_of(request)
    current: Viewer = viewer(request, services.settings)
    shown = list(flashes or [])
    if "ok" in request.query_params:
        shown.append(("ok", request.query_params["ok"][:300]))
    if "error" in request.query_params:
        shown.append(("error", request.query_params["error"][:500]))
    body = _templates.get_template(template).render(
        viewer=current,
        token_set=services.settings.api_token is not None,
        section=section,
        flashes=shown,
        **context,
    )
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


async def dashboard(request: Request) -> Response:
    if (login := needs_login(request, services_of(request).settings)) is not None:
        return login
    services = services_of(request)
    rows = await views.routine_rows(services)
    recent, _ = await services.store.page_runs(limit=50)
    return render(
        request,
        "dashboard.html",
        "Dashboard",
        rows=rows,
        runs=recent[:15],
        running=sum(1 for r in recent if not r.state.terminal),
        today=sum(row.runs_today for row in rows),
        failed=sum(1 for r in recent if r.state.value in ("failed", "timed_out")),
        week_cost=sum(row.cost_week for row in rows),
    )


async def routines_page(request: Request) -> Response:
    if (login := needs_login(request, services_of(request).settings)) is not None:
        return login
    services = services_of(request)
    rows = await views.routine_rows(services)
    return render(request, "routines.html", "Routines", rows=rows, errors=[str(e) for e in services.catalog.errors])


async def routine_page(request: Request, *, new_token: str | None = None) -> Response:
    if (login := needs_login(request, services_of(request).settings)) is not None:
        return login
    services = services_of(request)
    await services.refresh_routines()
    name = request.path_params["name"]
    try:
        routine = services.catalog.get(name)
    except RoutineNotFound as exc:
        return not_found(request, "Routines", "No such routine", str(exc), "/routines")
    [row] = [r for r in await views.routine_rows(services, fires_each=5) if r.routine.name == name]
    runs, _ = await services.store.page_runs(routine=name, limit=20)
    return render(
        request,
        "routine.html",
        "Routines",
        row=row,
        runs=runs,
        repos=list(routine.repos),
        new_token=new_token,
    )


async def runs_page(request: Request) -> Response:
    if (login := needs_login(request, services_of(request).settings)) is not None:
        return login
    services = services_of(request)
    filters = {key: (request.query_params.get(key) or None) for key in views.FILTERS}
    before = request.query_params.get("before") or None
    runs, next_before = await services.store.page_runs(
        routine=filters["routine"],
        repo=filters["repo"],
        trigger=filters["trigger"],
        state=filters["state"],
        limit=50,
        before=before,
    )
    query = {k: v for k, v in filters.items() if v} | ({"before": next_before} if next_before else {})
    return render(
        request,
        "runs.html",
        "Runs",
        runs=runs,
        filters=filters,
        states=views.STATES,
        routine_names=sorted(services.catalog.all()),
        next_before=next_before if len(runs) == 50 or (next_before and len(runs) < 50) else None,
        next_url="/runs?" + urlencode(query),
    )


async def run_page(request: Request) -> Response:
    if (login := needs_login(request, services_of(request).settings)) is not None:
        return login
    services = services_of(request)
    run_id = request.path_params["run_id"]
    try:
        run = await services.store.get_run(run_id)
    except (RunNotFound, ValueError):
        return not_found(request, "Runs", "No such run", f"There is no run {run_id!r}.", "/runs")
    tracking = _comment_url(services.settings.github_api_url, await services.store.redis.get(tracking_key(run.id)))
    source = f"/api/runs/{run.id}/events"
    return render(request, "run.html", "Runs", run=run, tracking=tracking, source=source, archived=run.archived)


def _comment_url(api_url: str, raw: bytes | None) -> str | None:
    """The link to the run's tracking comment on GitHub (or GitHub Enterprise Server, whose API lives under
    /api/v3 of the web host), from what app.triggers.tracking kept."""
    try:
        record = json.loads(raw) if raw else None
    except ValueError:
        return None
    if not isinstance(record, dict) or not all(record.get(k) for k in ("repo", "number", "comment_id")):
        return None
    parts = urlsplit(api_url)
    host = "github.com" if parts.netloc == "api.github.com" else parts.netloc
    path = f"/{record['repo']}/issues/{int(record['number'])}#issuecomment-{int(record['comment_id'])}"
    return f"{parts.scheme or 'https'}://{host}{path}"


def not_found(request: Request, section: str, title: str, text: str, back: str) -> HTMLResponse:
    return render(request, "message.html", section, status=404, title=title, text=text, back=back)


async def deliveries_page(request: Request) -> Response:
    if (login := needs_login(request, services_of(request).settings)) is not None:
        return login
    services = services_of(request)
    before = request.query_params.get("before") or None
    entries = await DeliveryLog(services.store.redis, services.store.prefix).recent(100, before=before)
    next_before = entries[-1][0] if len(entries) == 100 else None
    return render(request, "deliveries.html", "Deliveries", deliveries=entries, next_before=next_before)


async def secrets_page(request: Request) -> Response:
    if (login := needs_login(request, services_of(request).settings)) is not None:
        return login
    vault = services_of(request).vault()
    listed = await vault.list() if vault is not None else []
    return render(request, "secrets.html", "Secrets", vault=vault is not None, secrets=listed)


async def health_page(request: Request) -> Response:
    if (login := needs_login(request, services_of(request).settings)) is not None:
        return login
    report = await views.health(services_of(request))
    cutoff = time.time() - 60
    report.workers = [w for w in report.workers if float(w.get("seen") or 0) >= cutoff]
    return render(request, "health.html", "Health", health=report)


routes = [
    Route("/", dashboard),
    Route("/routines", routines_page),
    Route("/routines/{name}", routine_page),
    Route("/runs", runs_page),
    Route("/runs/{run_id}", run_page),
    Route("/deliveries", deliveries_page),
    Route("/secrets", secrets_page),
    Route("/health", health_page),
]
