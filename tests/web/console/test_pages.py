"""The console's pages over a real stack: what they show, what they escape, and the actions behind forms."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.testing.anthropic_server import Script, Turn, edit_create, text
from app.testing.stack import API_TOKEN, Stack, running_stack

HOSTILE = "<script>alert('x')</script>"


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    folder = tmp_path / "routines"
    folder.mkdir()
    (folder / "docs.md").write_text(
        f"---\nname: docs\ndescription: \"{HOSTILE}\"\nrepo: acme/calc\non:\n  api: true\n  schedule:\n"
        "    - cron: '30 6 * * 1'\n      timezone: America/New_York\n---\nFix the docs. [script:docs]\n"
    )
    with running_stack(tmp_path, redis_url, routines_dir=folder, secret_key="k" * 43) as s:
        s.github.add_repo("acme/calc", s.installation)
        yield s


def console(stack: Stack) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=stack.web_url, follow_redirects=False, timeout=10)
    client.post("/login", data={"token": API_TOKEN, "next": "/"})
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/routines/docs").text)
    assert found is not None
    return client, found.group(1)


def test_pages_show_runs_and_escape_what_people_wrote(stack: Stack) -> None:
    stack.anthropic.add_script(
        Script(
            match="[script:docs]",
            turns=[Turn([edit_create("NOTES.md", "n\n")]), Turn([text(f"Done\n\n{HOSTILE}")])],
        )
    )
    client, _ = console(stack)
    run = stack.wait(stack.fire("docs", text=HOSTILE).json()["run_id"])
    assert run["state"] == "succeeded"
    for path in ("/", "/routines", "/routines/docs", "/runs", f"/runs/{run['id']}"):
        page = client.get(path).text
        assert HOSTILE not in page, path
    routine = client.get("/routines/docs").text
    assert "&lt;script&gt;" in routine and "America/New_York" not in routine.split("Next fires")[0][-200:]
    fires = re.findall(r"<li>(\d{4}-\d\d-\d\d 06:30 E[SD]T)</li>", routine)
    assert len(fires) == 5, "five Monday 06:30 New York times"
    runs = client.get("/runs").text
    assert run["id"][-8:] in runs and "succeeded" in runs and f'href="{run["pull_request"]["url"]}"' in runs
    page = client.get(f"/runs/{run['id']}").text
    assert 'data-source="/api/runs/' in page and "/static/run.js" in page


def test_runs_filter_by_state_repository_and_trigger(stack: Stack) -> None:
    stack.anthropic.add_script(Script(match="[script:docs]", turns=[Turn([text("Nothing to do.")])], loop_last=True))
    client, _ = console(stack)
    first = stack.wait(stack.fire("docs").json()["run_id"])
    assert first["state"] == "no_changes"
    assert first["id"][-8:] in client.get("/runs?state=no_changes").text
    assert "No runs." in client.get("/runs?state=failed").text
    assert first["id"][-8:] in client.get("/runs?repo=acme/calc&trigger=api").text
    assert "No runs." in client.get("/runs?repo=acme/other").text
    assert "No runs." in client.get("/runs?trigger=schedule").text


def test_forms_fire_message_cancel_and_keep_secrets(stack: Stack) -> None:
    client, csrf = console(stack)
    stack.anthropic.add_script(
        Script(match="[script:docs]", turns=[Turn([edit_create("A.md", "a\n")], delay_ms=3000)], loop_last=True)
    )
    fired = client.post("/routines/docs/fire", data={"csrf": csrf, "text": "go"})
    assert fired.status_code == 303 and fired.headers["location"].startswith("/runs/")
    run_id = fired.headers["location"].split("/")[2].split("?")[0]
    assert client.post(f"/runs/{run_id}/message", data={"csrf": csrf, "text": "also B"}).status_code == 303
    assert client.post(f"/runs/{run_id}/cancel", data={"csrf": csrf}).status_code == 303
    assert stack.wait(run_id)["state"] == "cancelled"
    events = [e["type"] for e in stack.events(run_id)]
    assert "run.message" in events  # queued or running, the cancel ends it either way
    rotated = client.post("/routines/docs/token", data={"csrf": csrf})
    token = re.search(r'<code class="token">(rt_[^<]+)</code>', rotated.text)
    assert token is not None and stack.fire("docs", token=token.group(1)).status_code in (202, 409)
    secret = {"csrf": csrf, "name": "SENTRY", "domains": "sentry.io", "value": "s3cr3t-value"}
    assert client.post("/secrets", data=secret).status_code == 303
    secrets = client.get("/secrets").text
    assert "<code>SENTRY</code>" in secrets and "<td>sentry.io</td>" in secrets and "s3cr3t-value" not in secrets
    assert client.post("/secrets/SENTRY/delete", data={"csrf": csrf}).status_code == 303
    assert "<code>SENTRY</code>" not in client.get("/secrets").text


def test_health_lists_the_workers_that_reported(stack: Stack) -> None:
    client, _ = console(stack)
    deadline = time.monotonic() + 15
    while "worker-" not in (page := client.get("/health").text) and time.monotonic() < deadline:
        time.sleep(0.2)  # a worker reports within a second or two of starting
    assert "worker-" in page and "Redis" in page and ">ok<" in page
    assert socket.gethostname() in page


def test_a_run_page_escapes_what_is_in_its_address(stack: Stack) -> None:
    client, _ = console(stack)
    run_id = stack.fire("docs").json()["run_id"]
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200 and run_id in page.text and "/static/run.js" in page.text
    missing = client.get("/runs/%3Cscript%3Ealert(1)")
    assert missing.status_code == 404 and "<script>alert(1)" not in missing.text and "&lt;script&gt;" in missing.text
