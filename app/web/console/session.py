"""Console login: the admin token (ROUTINES_API_TOKEN) on a form becomes a signed session cookie.

The cookie holds a CSRF token and is signed (itsdangerous) with a key derived from the admin token, so
rotating the token logs everyone out. It is HttpOnly, SameSite=Strict, Secure when the public URL is
https, and lasts `SESSION_S`. Every form carries the session's CSRF token and every POST checks it (and
the Origin header, when the browser sends one). Without ROUTINES_API_TOKEN the console is readable by
anyone who can connect, like the API's reads, and offers no actions.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.core.config import Settings

COOKIE = "routines_console"
SESSION_S = 12 * 3600


@dataclass(frozen=True)
class Viewer:
    """Who is looking: `can_act` when logged in with the admin token; `csrf` goes into every form."""

    logged_in: bool
    can_act: bool
    csrf: str = ""


def _serializer(settings: Settings) -> URLSafeTimedSerializer | None:
    if settings.api_token is None:
        return None
    key = hmac.new(settings.api_token.encode(), b"routines console session", hashlib.sha256).hexdigest()
    return URLSafeTimedSerializer(key, salt="console")


def viewer(request: Request, settings: Settings) -> Viewer:
    serializer = _serializer(settings)
    if serializer is None:
        return Viewer(logged_in=False, can_act=False)
    raw = request.cookies.get(COOKIE)
    if not raw:
        return Viewer(logged_in=False, can_act=False)
    try:
        data = serializer.loads(raw, max_age=SESSION_S)
    except BadSignature:
        return Viewer(logged_in=False, can_act=False)
    csrf = data.get("csrf") if isinstance(data, dict) else None
    if not isinstance(csrf, str) or not csrf:
        return Viewer(logged_in=False, can_act=False)
    return Viewer(logged_in=True, can_act=True, csrf=csrf)


def needs_login(request: Request, settings: Settings) -> Response | None:
    """A redirect to the login form when the console needs a session and this request has none."""
    if settings.api_token is None or viewer(request, settings).logged_in:
        return None
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def start_session(settings: Settings, response: Response) -> None:
    serializer = _serializer(settings)
    if serializer is None:
        raise ValueError("a console session needs ROUTINES_API_TOKEN")
    value = serializer.dumps({"csrf": secrets.token_urlsafe(24)})
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=settings.base_url.startswith("https://"),
    )


def end_session(settings: Settings, response: Response) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=settings.base_url.startswith("https://")
    )


def token_matches(settings: Settings, token: str) -> bool:
    expected = settings.api_token
    return bool(expected and token and hmac.compare_digest(token.encode(), expected.encode()))


def csrf_ok(request: Request, settings: Settings, sent: str) -> bool:
    """The form's CSRF token is the session's, and the request comes from this console's own origin."""
    current = viewer(request, settings)
    if not current.can_act or not sent or not hmac.compare_digest(sent.encode(), current.csrf.encode()):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of this console only (no other host, no scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
