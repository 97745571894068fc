"""Console login: the admin token becomes a signed, HttpOnly, SameSite=Strict cookie; every page needs it;
every form carries a CSRF token from this console's own origin; without an admin token it is read-only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.testing.stack import API_TOKEN, Stack, running_stack

PAGES = ["/", "/routines", "/routines/docs", "/runs", "/deliveries", "/secrets", "/health"]
ROUTINE = "---\nname: docs\nrepo: acme/calc\non:\n  api: true\n---\nFix the docs.\n"


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    folder = tmp_path / "routines"
    folder.mkdir()
    (folder / "docs.md").write_text(ROUTINE)
    with running_stack(tmp_path, redis_url, routines_dir=folder, worker=False) as s:
        yield s


def browser(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.web_url, follow_redirects=False, timeout=10)


def logged_in(stack: Stack) -> tuple[httpx.Client, str]:
    """A client with a session, and the CSRF token its pages carry."""
    client = browser(stack)
    answer = client.post("/login", data={"token": API_TOKEN, "next": "/routines/docs"})
    assert answer.status_code == 303 and answer.headers["location"] == "/routines/docs"
    page = client.get("/routines/docs").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    return client, csrf.group(1)


def test_every_page_without_a_session_goes_to_the_login_form(stack: Stack) -> None:
    client = browser(stack)
    for path in [*PAGES, "/runs/0190abc"]:
        answer = client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next=%2F"), path
    login = client.get("/login?next=%2Fruns")
    assert login.status_code == 200 and 'name="token"' in login.text and 'value="/runs"' in login.text
    assert client.get("/api/runs").status_code == 401, "the API's reads still need a token"


def test_the_admin_token_logs_in_with_a_strict_httponly_cookie(stack: Stack) -> None:
    client = browser(stack)
    wrong = client.post("/login", data={"token": "not-it", "next": "/"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    answer = client.post("/login", data={"token": API_TOKEN, "next": "/runs"})
    cookie = answer.headers["set-cookie"]
    assert answer.status_code == 303 and cookie.startswith("routines_console=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie and "Max-Age=43200" in cookie
    assert "Secure" not in cookie, "the test console is plain http"
    for path in PAGES:
        page = client.get(path)
        assert page.status_code == 200, path
        assert page.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
        assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/runs").status_code == 200, "the session reads the API as the pages do"
    assert client.post("/api/routines/docs/fire").status_code == 401, "but acts only through the console's forms"


def test_a_forged_or_replayed_cookie_is_no_session(stack: Stack) -> None:
    client, _ = logged_in(stack)
    value = client.cookies["routines_console"]
    forged = browser(stack)
    forged.cookies.set("routines_console", value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    assert forged.get("/runs").status_code == 303
    for bad in ("", "x", "eyJjc3JmIjoiIn0.a.b"):
        other = browser(stack)
        other.cookies.set("routines_console", bad)
        assert other.get("/runs").status_code == 303


def test_forms_need_the_sessions_csrf_token_from_this_origin(stack: Stack) -> None:
    client, csrf = logged_in(stack)
    assert client.post("/routines/docs/pause", data={}).status_code == 403
    assert client.post("/routines/docs/pause", data={"csrf": "guess"}).status_code == 403
    cross = client.post("/routines/docs/pause", data={"csrf": csrf}, headers={"origin": "https://evil.example"})
    assert cross.status_code == 403
    assert browser(stack).post("/routines/docs/pause", data={"csrf": csrf}).status_code == 403, "no session"
    done = client.post("/routines/docs/pause", data={"csrf": csrf}, headers={"origin": stack.web_url})
    assert done.status_code == 303 and done.headers["location"].startswith("/routines/docs?ok=")
    assert "paused" in client.get("/routines/docs").text


def test_login_only_sends_people_to_this_console(stack: Stack) -> None:
    for target in ("//evil.example/x", "https://evil.example", "/\\evil.example", "javascript:alert(1)"):
        answer = browser(stack).post("/login", data={"token": API_TOKEN, "next": target})
        assert answer.headers["location"] == "/", target


def test_logout_ends_the_session(stack: Stack) -> None:
    client, csrf = logged_in(stack)
    out = client.post("/logout", data={"csrf": csrf})
    assert out.status_code == 303 and "routines_console=" in out.headers["set-cookie"]
    assert client.get("/runs").status_code == 303


def test_without_an_admin_token_the_console_is_read_only(tmp_path: Path, redis_url: str) -> None:
    folder = tmp_path / "routines"
    folder.mkdir()
    (folder / "docs.md").write_text(ROUTINE)
    with running_stack(tmp_path, redis_url, routines_dir=folder, worker=False, api_token=None) as stack:
        client = browser(stack)
        page = client.get("/routines/docs")
        assert page.status_code == 200 and "read-only" in page.text and "Run now" not in page.text
        answer = client.post("/routines/docs/pause", data={"csrf": "anything"})
        assert answer.status_code == 403 and "ROUTINES_API_TOKEN" in answer.text
        assert client.get("/login").status_code == 303
