"""POST /webhooks/github: the test GitHub sends signed deliveries to a real web process over real Redis."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from githubkit.webhooks import parse_obj

from app.testing.webhook_stack import SECRET, HookStack, webhook_stack
from tests.support.paths import PAYLOADS

ROUTINE = """---
name: labelled-fix
repo: "*"
on:
  github:
    issues: {types: [labeled], labels: [bug]}
---
Fix the issue.
"""


def payload(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text())
    return data


def on_repo(hooks: HookStack, data: dict[str, Any], repo: str = "acme/api") -> dict[str, Any]:
    """`data` moved to a repository of the test GitHub, with an issue that exists there."""
    data = copy.deepcopy(data)
    if repo not in hooks.github.repos:
        hooks.github.add_repo(repo, hooks.installation)
        hooks.github.repos[repo].collaborators["Codertocat"] = "write"  # who acts in the payloads
    data["repository"]["full_name"] = repo
    data["installation"] = {"id": hooks.installation, "node_id": "x"}
    if "issue" in data:
        data["issue"]["number"] = hooks.github.add_issue(repo, data["issue"]["title"], data["issue"]["body"] or "")
    return data


@pytest.fixture
def hooks(tmp_path: Path, redis_url: str) -> Iterator[HookStack]:
    """The web process as `routines web` serves it."""
    routines = tmp_path / "routines"
    routines.mkdir()
    (routines / "labelled-fix.md").write_text(ROUTINE)
    with webhook_stack(tmp_path, redis_url, routines_dir=routines) as stack:
        yield stack


def post(hooks: HookStack, body: bytes, headers: dict[str, str]) -> httpx.Response:
    base = {"x-github-event": "issues", "x-github-delivery": "d-1", "content-type": "application/json"}
    return httpx.post(hooks.hook_url, content=body, headers={**base, **headers}, timeout=30)


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"x-hub-signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def test_ping_is_answered_pong(hooks: HookStack) -> None:
    hooks.send("ping", payload("ping"))
    assert hooks.github.hook_deliveries[-1]["status_code"] == 200
    response = post(
        hooks, b'{"zen": "Keep it simple."}', {"x-github-event": "ping", **signed(b'{"zen": "Keep it simple."}')}
    )
    assert response.status_code == 200 and response.headers["x-routines-delivery"] == "pong"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "X-Hub-Signature-256 is missing"),
        ({"x-hub-signature": "sha1=" + hmac.new(SECRET.encode(), b"{}", hashlib.sha1).hexdigest()}, "is missing"),
        ({"x-hub-signature-256": "sha1=abc"}, "not of the form sha256="),
        (signed(b"{}", "wrong-secret"), "does not match the body"),
        (signed(b"{ }"), "does not match the body"),
    ],
)
def test_a_missing_sha1_only_or_wrong_signature_is_refused_401(
    hooks: HookStack, headers: dict[str, str], reason: str
) -> None:
    response = post(hooks, b"{}", headers)
    assert response.status_code == 401
    assert reason in response.json()["error"]


def test_without_a_webhook_secret_the_answer_is_500_naming_the_setting(tmp_path: Path, redis_url: str) -> None:
    with webhook_stack(tmp_path, redis_url, routines_dir=tmp_path, github_webhook_secret=None) as stack:
        response = post(stack, b"{}", signed(b"{}"))
    assert response.status_code == 500
    assert "GITHUB_WEBHOOK_SECRET is not set" in response.json()["error"]


def test_a_body_over_25_mb_is_refused_413_while_streaming(hooks: HookStack) -> None:
    chunk = b" " * (1024 * 1024)

    def body() -> Iterator[bytes]:
        yield b"{"
        for _ in range(26):
            yield chunk
        yield b"}"

    headers = {"x-github-event": "issues", "x-github-delivery": "big", "x-hub-signature-256": "sha256=00"}
    response = httpx.post(hooks.hook_url, content=body(), headers=headers, timeout=30)
    assert response.status_code == 413
    assert "25" in response.json()["error"] or "26214400" in response.json()["error"]
    assert "content-length" not in response.request.headers
    head = f"POST /webhooks/github HTTP/1.1\r\nhost: x\r\ncontent-length: {30 * 1024 * 1024}\r\n\r\n{{}}"
    with socket.create_connection(("127.0.0.1", int(hooks.web_url.rsplit(":", 1)[1])), timeout=10) as conn:
        conn.sendall(head.encode())
        assert conn.recv(100).startswith(b"HTTP/1.1 413 "), "refused on the declared length, before reading"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"action": ', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"issue": {"labels": [{"name": "bug"},, ]}}', "not JSON"),  # deep inside, where nothing is built
        (b'{"issue": {"title": tru}}', "not JSON"),
        (b'{"action": "labeled"} {}', "not JSON"),
        (b'{"title": "caf\xe9"}', "not UTF-8"),
        (b"", "not JSON"),
    ],
)
def test_a_malformed_body_is_refused_400_with_a_reason(hooks: HookStack, body: bytes, reason: str) -> None:
    response = post(hooks, body, signed(body))
    assert response.status_code == 400
    assert reason in response.json()["error"]


def test_an_event_no_routine_listens_to_is_acknowledged_and_ignored(hooks: HookStack) -> None:
    hooks.send("release", on_repo(hooks, payload("release.published")))
    assert hooks.github.hook_deliveries[-1]["status_code"] == 202
    assert hooks.drain() == []


def test_the_same_signed_delivery_sent_ten_times_starts_one_run(hooks: HookStack) -> None:
    data = on_repo(hooks, payload("issues.labeled"))
    guid = hooks.send("issues", data)
    for _ in range(9):
        hooks.send("issues", data, guid=guid)
    statuses = [d["status_code"] for d in hooks.github.hook_deliveries]
    assert statuses == [202] + [200] * 9
    runs = hooks.drain()
    assert [(r.routine, r.repo, r.trigger.data["delivery"]) for r in runs] == [("labelled-fix", "acme/api", guid)]
    hooks.send("issues", data, guid=guid)
    assert len(hooks.drain()) == 1


def test_a_payload_githubkit_rejects_is_accepted_and_fires(hooks: HookStack) -> None:
    data = payload("issues.labeled")
    with pytest.raises(pydantic.ValidationError, match="archived_at"):
        parse_obj("issues", data)
    hooks.send("issues", on_repo(hooks, data))
    assert hooks.github.hook_deliveries[-1]["status_code"] == 202
    (run,) = hooks.drain()
    assert run.trigger.kind == "github" and run.trigger.data["label"] == "bug"
    assert '<field name="issue.title" author="Codertocat" trust="untrusted">' in (run.trigger.text or "")


def test_redis_unreachable_answers_503_never_2xx(tmp_path: Path, redis_url: str) -> None:
    routines = tmp_path / "routines"
    routines.mkdir()
    (routines / "labelled-fix.md").write_text(ROUTINE)
    with webhook_stack(tmp_path, "redis://127.0.0.1:9/0", routines_dir=routines) as stack:
        stack.send("issues", on_repo(stack, payload("issues.labeled")))
        response = post(stack, b"{}", signed(b"{}"))
    attempt = stack.github.hook_deliveries[-1]
    assert attempt["status_code"] == 503 and attempt["status"] == "Invalid HTTP Response: 503"
    assert response.status_code == 503 and "Redis failed" in response.json()["error"]


def test_a_captured_delivery_sent_again_under_new_guids_or_events_starts_one_run(hooks: HookStack) -> None:
    guid = hooks.send("issues", on_repo(hooks, payload("issues.labeled")))
    captured = hooks.github.hook_targets[guid].body  # body and signature, all a replay needs

    def replay(event: str, guid: str) -> tuple[int, str]:
        response = post(hooks, captured, {"x-github-event": event, "x-github-delivery": guid, **signed(captured)})
        return response.status_code, response.headers["x-routines-delivery"]

    assert replay("issues", guid) == (200, "duplicate: claimed before, not run again")
    for event, other in [("issues", "attacker-2"), ("issues", "attacker-3"), ("pull_request_review", "attacker-4")]:
        status, outcome = replay(event, other)
        assert status == 200 and outcome.startswith("duplicate: a replay"), (event, other)
    runs = hooks.drain()
    assert [(r.routine, r.trigger.data["delivery"]) for r in runs] == [("labelled-fix", guid)]


def test_two_deliveries_that_differ_only_in_a_field_each_start_a_run(hooks: HookStack) -> None:
    data = on_repo(hooks, payload("issues.labeled"))
    first = hooks.send("issues", data)
    second = hooks.send("issues", {**data, "issue": {**data["issue"], "updated_at": "2030-01-01T00:00:00Z"}})
    assert [d["status_code"] for d in hooks.github.hook_deliveries] == [202, 202]
    assert sorted(r.trigger.data["delivery"] for r in hooks.drain()) == sorted([first, second])


@pytest.mark.parametrize("guid", ["G:fired", "g-1:payload", "a" * 65, "g 1", "g/1", "g.1", "g\t1"])
def test_a_delivery_guid_of_another_shape_is_refused_400_and_claims_nothing(hooks: HookStack, guid: str) -> None:
    data = on_repo(hooks, payload("issues.labeled"))
    body = json.dumps(data).encode()
    response = post(hooks, body, {"x-github-delivery": guid, **signed(body)})
    assert response.status_code == 400
    assert "X-GitHub-Delivery" in response.json()["error"] and "letters, digits and hyphens" in response.json()["error"]
    assert hooks.drain() == []


def test_a_guid_with_a_suffix_cannot_take_the_claim_of_the_delivery_it_names(hooks: HookStack) -> None:
    data = on_repo(hooks, payload("issues.labeled"))
    body = json.dumps({**data, "issue": {**data["issue"], "updated_at": "2030-01-01T00:00:00Z"}}).encode()
    assert post(hooks, body, {"x-github-delivery": "g-7:fired", **signed(body)}).status_code == 400
    guid = hooks.send("issues", data, guid="g-7")
    assert hooks.github.hook_deliveries[-1]["status_code"] == 202
    assert [r.trigger.data["delivery"] for r in hooks.drain()] == [guid]
