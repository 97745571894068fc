"""Steering a live run through the API: a message the model sees at its next turn, and cancel."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.testing.anthropic_server import Script, Turn, bash, edit_create, text
from app.testing.stack import API_TOKEN, Stack, running_stack


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    folder = tmp_path / "routines"
    folder.mkdir()
    for name in ("steered", "stopped"):
        (folder / f"{name}.md").write_text(f"---\nname: {name}\nrepo: acme/svc\n---\nWork. [script:{name}]\n")
    with running_stack(tmp_path, redis_url, routines_dir=folder) as s:
        s.github.add_repo("acme/svc", s.installation)
        yield s


def wait_for_event(stack: Stack, run_id: str, kind: str, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(e["type"] == kind for e in stack.events(run_id)) >= count:
            return
        time.sleep(0.05)
    raise TimeoutError(f"run {run_id} never emitted {count} {kind} events")


def post(stack: Stack, path: str, body: dict[str, str] | None = None, token: str = API_TOKEN) -> tuple[int, Any]:
    reply = stack.client.post(f"{stack.web_url}{path}", json=body or {}, headers={"authorization": f"Bearer {token}"})
    return reply.status_code, reply.json()


def test_a_message_reaches_the_model_at_its_next_turn(stack: Stack) -> None:
    stack.anthropic.add_script(
        Script(
            match="[script:steered]",
            turns=[Turn([bash("sleep 2; echo slept")]), Turn([text("Noted; nothing to change.")])],
        )
    )
    run_id = stack.fire("steered").json()["run_id"]
    wait_for_event(stack, run_id, "tool.call")
    status, body = post(stack, f"/api/runs/{run_id}/messages", {"text": "Only touch the docs folder."})
    assert status == 202 and body["queued"] is True
    run = stack.wait(run_id)
    assert run["state"] == "no_changes"
    second = stack.anthropic.requests[1].body["messages"][-1]["content"]
    assert "Only touch the docs folder." in str(second)
    kinds = [e["type"] for e in stack.events(run_id)]
    assert kinds.index("run.message") < kinds.index("run.message.delivered")
    status, body = post(stack, f"/api/runs/{run_id}/messages", {"text": "too late"})
    assert status == 409 and "already ended" in body["error"]


def test_cancel_stops_the_run_and_delivers_the_partial_work(stack: Stack) -> None:
    stack.anthropic.add_script(
        Script(
            match="[script:stopped]",
            turns=[Turn([edit_create("PARTIAL.md", "half done\n")]), Turn([bash("sleep 0.3; echo working")])],
            loop_last=True,
        )
    )
    run_id = stack.fire("stopped").json()["run_id"]
    wait_for_event(stack, run_id, "tool.result", count=2)
    assert post(stack, f"/api/runs/{run_id}/cancel", token="wrong")[0] == 401
    status, _ = post(stack, f"/api/runs/{run_id}/cancel")
    assert status == 202
    run = stack.wait(run_id)
    assert run["state"] == "cancelled" and "cancelled" in run["error"] and run["incomplete"] is True
    pulls = stack.github.pulls("acme/svc")
    assert len(pulls) == 1 and pulls[0]["title"].startswith("[incomplete]") and pulls[0]["draft"] is True
