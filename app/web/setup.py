"""`/setup`: create the GitHub App from `app.yml` with GitHub's manifest flow, then keep its credentials.

Only the operator may do it: while no App exists, the web process prints a one-time setup link
(`/setup?key=…`, the key shared by every web process through Redis, valid 7 days) in its log when
it starts. Opening it spends the key (a restart prints a new one); it, or ROUTINES_API_TOKEN as a
bearer, starts a setup session: an HttpOnly,
SameSite=Lax cookie scoped to /setup, and a redirect that drops the key from the address bar (so
no Referer carries it). GET /setup with that cookie answers a form that POSTs the manifest to
GitHub (`{web}/settings/apps/new`, or an organisation's) with a `state` bound to the session;
GitHub sends the browser back to `/setup/done?code=…&state=…`, which needs the same cookie. The
code is exchanged (`POST /app-manifests/{code}/conversions`) for the App's id, private key and
webhook secret, written to ROUTINES_DATA_DIR (mode 0600) and never shown; the key is then spent.
Any other request gets 403, and once an App exists `/setup` offers nothing.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import yaml
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from app.core.config import Settings
from app.services import Services
from app.web.api import bearer_token, is_admin, services_of

log = logging.getLogger(__name__)

STATE_TTL_S = 3600
KEY_TTL_S = 7 * 86400
COOKIE = "routines_setup"
APP_FILE = "github-app.json"
KEY_FILE = "github-app.pem"
_CODE = re.compile(r"[A-Za-z0-9_-]{1,200}")
_ORG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"><title>Routines setup</title>'
    "<style>body{{font:15px system-ui,sans-serif;margin:3rem;max-width:46rem}}code,pre{{background:#f3f3f3}}</style>"
    "</head><body><h1>{title}</h1>{body}</body></html>"
)


def github_web_url(api_url: str) -> str:
    """GitHub's web URL for an API URL: api.github.com → github.com, https://HOST/api/v3 → https://HOST."""
    parts = urlsplit(api_url.rstrip("/"))
    if parts.netloc == "api.github.com":
        return "https://github.com"
    path = parts.path.removesuffix("/api/v3")
    return f"{parts.scheme}://{parts.netloc}{path}"


def manifest(settings: Settings, source: Path) -> dict[str, Any]:
    """The App manifest of `source` (app.yml) with this installation's webhook and redirect URLs."""
    data: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    base = settings.base_url
    data["url"] = base
    data["hook_attributes"] = {**(data.get("hook_attributes") or {}), "url": f"{base}/webhooks/github", "active": True}
    data["redirect_url"] = f"{base}/setup/done"
    return data


def _manifest_file(settings: Settings) -> Path | None:
    for candidate in (Path.cwd() / "app.yml", settings.routines_dir.resolve().parent / "app.yml"):
        if candidate.is_file():
            return candidate
    return None


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    page = HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status)
    page.headers["referrer-policy"] = "no-referrer"
    page.headers["cache-control"] = "no-store"
    return page


def _already(services: Services) -> HTMLResponse | None:
    settings = services.settings
    if settings.github_app_configured or (settings.data_dir / APP_FILE).exists():
        return _page("Already set up", "<p>Routines is already connected to a GitHub App.</p>", 409)
    return None


def _key_name(services: Services) -> str:
    return f"{services.store.prefix}setup:key"


async def setup_link(services: Services) -> str | None:
    """The one-time setup link while no App exists (None once one does); made once, shared through Redis."""
    if _already(services) is not None:
        return None
    redis = services.store.redis
    await redis.set(_key_name(services), secrets.token_urlsafe(24), nx=True, ex=KEY_TTL_S)
    key = await redis.get(_key_name(services))
    return f"{services.settings.base_url}/setup?key={key.decode()}" if key else None


async def _session(request: Request, services: Services) -> str | None:
    """The setup session of the browser's cookie, when it is one this installation started."""
    session = request.cookies.get(COOKIE, "")
    if not session or not re.fullmatch(r"[A-Za-z0-9_-]{20,64}", session):
        return None
    return session if await services.store.redis.exists(f"{services.store.prefix}setup:session:{session}") else None


async def _opened_with_key(request: Request, services: Services) -> bool:
    """The admin token, or the setup key, which is spent by this: the link works once."""
    if is_admin(services, bearer_token(request)):
        return True
    given = request.query_params.get("key", "")
    stored = await services.store.redis.get(_key_name(services)) if given else None
    if stored is None or not hmac.compare_digest(given.encode(), stored):
        return False
    return bool(await services.store.redis.delete(_key_name(services)))


async def _begin(request: Request, services: Services) -> Response:
    """The key was right: start a session bound to this browser and come back without the key in the URL."""
    session = secrets.token_urlsafe(32)
    await services.store.redis.set(f"{services.store.prefix}setup:session:{session}", "1", ex=STATE_TTL_S)
    org = request.query_params.get("org")
    back = RedirectResponse("/setup" + (f"?org={quote(org)}" if org else ""), status_code=303)
    back.headers["referrer-policy"] = "no-referrer"
    secure = services.settings.base_url.startswith("https://")
    back.set_cookie(COOKIE, session, max_age=STATE_TTL_S, path="/setup", httponly=True, samesite="lax", secure=secure)
    return back


async def _refuse(services: Services) -> Response:
    log.info("/setup refused a request without the setup link or the admin token")
    return _page(
        "Setup link needed",
        "<p>Creating the GitHub App is for the operator: open the one-time setup link that the web process "
        "printed in its log when it started (restart it for a new one), or send <code>ROUTINES_API_TOKEN</code> "
        "as a bearer token.</p>",
        403,
    )


async def start(request: Request) -> Response:
    """GET /setup[?org=NAME][&key=KEY]: with the key, start a session; with a session, the form for GitHub."""
    services = services_of(request)
    if (done := _already(services)) is not None:
        return done
    session = await _session(request, services)
    if session is None:
        return await _begin(request, services) if await _opened_with_key(request, services) else await _refuse(services)
    source = _manifest_file(services.settings)
    if source is None:
        return _page("No app.yml", "<p>Run Routines from the folder that holds <code>app.yml</code>.</p>", 500)
    org = request.query_params.get("org")
    if org is not None and not _ORG.fullmatch(org):
        return _page("Bad organisation", "<p><code>org</code> must be a GitHub organisation login.</p>", 400)
    state = secrets.token_urlsafe(24)
    await services.store.redis.set(f"{services.store.prefix}setup:state:{state}", session, ex=STATE_TTL_S)
    web = github_web_url(services.settings.github_api_url)
    action = f"{web}/organizations/{org}/settings/apps/new" if org else f"{web}/settings/apps/new"
    body = (
        f"<p>This creates the GitHub App on <code>{html.escape(web)}</code> with the events and permissions "
        f"of the shipped routines; GitHub then sends you back here.</p>"
        f'<form method="post" action="{html.escape(action)}?state={quote(state)}">'
        f'<input type="hidden" name="manifest" value="{html.escape(json.dumps(manifest(services.settings, source)))}">'
        '<button type="submit">Create the GitHub App</button></form>'
    )
    return _page("Set up Routines", body)


async def done(request: Request) -> Response:
    """GET /setup/done?code=…&state=…: exchange the code and store the App's credentials."""
    services = services_of(request)
    if (already := _already(services)) is not None:
        return already
    code, state = request.query_params.get("code", ""), request.query_params.get("state", "")
    session = await _session(request, services)
    if session is None:
        return await _refuse(services)
    bound = await services.store.redis.getdel(f"{services.store.prefix}setup:state:{state}") if state else None
    if bound is None or not hmac.compare_digest(bound, session.encode()):
        return _page(
            "Setup expired",
            '<p>This return was not started in this browser, or it expired; <a href="/setup">start again</a>.</p>',
            400,
        )
    if not _CODE.fullmatch(code):
        return _page("No code", '<p>GitHub sent no usable code; <a href="/setup">start again</a>.</p>', 400)
    settings = services.settings
    try:
        async with httpx.AsyncClient(timeout=settings.http_timeout_s) as client:
            answer = await client.post(
                f"{settings.github_api_url}/app-manifests/{code}/conversions",
                headers={"accept": "application/vnd.github+json", "x-github-api-version": "2022-11-28"},
            )
    except httpx.HTTPError as exc:
        return _page("GitHub unreachable", f"<p>{html.escape(str(exc))}; check GITHUB_API_URL.</p>", 502)
    if answer.status_code != 201:
        reason = html.escape(str(answer.json().get("message", answer.text[:200])))
        return _page(
            "GitHub refused", f"<p>{reason} (HTTP {answer.status_code}); <a href='/setup'>start again</a>.</p>", 502
        )
    saved = save_app(settings.data_dir, answer.json())
    await services.store.redis.delete(_key_name(services), f"{services.store.prefix}setup:session:{session}")
    return _page("GitHub App created", _instructions(*saved))


def save_app(data_dir: Path, app: dict[str, Any]) -> tuple[dict[str, Any], Path, Path]:
    """Write the key and the App's settings (mode 0600, never overwritten); returns (settings, json path, pem path)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    pem = (data_dir / KEY_FILE).resolve()
    info = {k: app.get(k) for k in ("id", "slug", "name", "html_url", "client_id", "client_secret", "webhook_secret")}
    info["private_key_path"] = str(pem)
    _write_private(pem, app["pem"])
    path = (data_dir / APP_FILE).resolve()
    _write_private(path, json.dumps(info, indent=2) + "\n")
    return info, path, pem


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _instructions(info: dict[str, Any], path: Path, pem: Path) -> str:
    install = f"{info.get('html_url') or ''}/installations/new"
    env = (
        f"GITHUB_APP_ID={info['id']}\nGITHUB_APP_PRIVATE_KEY_PATH={pem}\n"
        f"GITHUB_WEBHOOK_SECRET=$(python3 -c \"import json;print(json.load(open('{path}'))['webhook_secret'])\")"
    )
    return (
        f"<p>App <b>{html.escape(str(info.get('name') or info.get('slug')))}</b> (id {info['id']}) exists. "
        f"Its key and webhook secret are in <code>{html.escape(str(path))}</code> and "
        f"<code>{html.escape(str(pem))}</code> (readable by this user only).</p>"
        f"<p>Set these for the web and worker processes, then restart them:</p><pre>{html.escape(env)}</pre>"
        f'<p>Then <a href="{html.escape(install)}">install the App</a> on the repositories your routines use.</p>'
    )


routes = [Route("/setup", start), Route("/setup/done", done)]
