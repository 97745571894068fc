"""The web process as `routines web` serves it (uvicorn's public Config, the webhook a plain ASGI endpoint),
checked over raw sockets against a real server and Redis: keep-alive, pipelining, close, chunked
bodies, clients that leave, shutdown with an answer pending."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import redis
from starlette.applications import Starlette
from starlette.routing import Route

from app.services import Services
from app.testing.serve import serve_in_thread
from app.testing.webhook_stack import SECRET, HookStack, webhook_stack
from app.triggers.intake import claim_key, unpack_payload
from app.web.webhooks import PATH, GitHubWebhook, Headers, Reply

ROUTINE = "---\nname: labelled\nrepo: '*'\non:\n  github:\n    issues: {types: [labeled]}\n---\nFix.\n"


def body_of(guid: str) -> bytes:
    """A body of its own for each delivery: one signed body sent under two GUIDs is a replay."""
    return json.dumps({"action": "labeled", "issue": {"number": 1, "title": "café ☕"}, "n": guid}).encode()


@pytest.fixture
def hooks(tmp_path: Path, redis_url: str) -> Iterator[HookStack]:
    routines = tmp_path / "routines"
    routines.mkdir()
    (routines / "labelled.md").write_text(ROUTINE)
    with webhook_stack(tmp_path, redis_url, routines_dir=routines) as stack:
        yield stack


def request(guid: str, body: bytes | None = None, *, extra: str = "", chunked: bool = False) -> bytes:
    body = body_of(guid) if body is None else body
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    head = (
        f"POST /webhooks/github HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-github-event: issues\r\n"
        f"x-github-delivery: {guid}\r\nx-hub-signature-256: {signature}\r\n{extra}"
    )
    if chunked:
        half = len(body) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
        return f"{head}transfer-encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n"
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


def response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response read from `stream` (content-length bodies only: all this server sends)."""
    status = int(stream.readline().split(b" ")[1])
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    return status, headers, stream.read(int(headers.get("content-length", "0")))


def connect(hooks: HookStack) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(hooks.web_url.rsplit(":", 1)[1])), timeout=10)


def blocked(admin: redis.Redis) -> int:
    info: Any = admin.info("clients")
    return int(info["blocked_clients"])


def stored(hooks: HookStack, guid: str) -> bytes | None:
    client = redis.Redis.from_url(hooks.settings.redis_url or "")
    try:
        value = client.get(claim_key(guid) + ":payload")
        assert value is None or isinstance(value, bytes)
        return None if value is None else unpack_payload(value)
    finally:
        client.close()


def test_webhooks_and_api_requests_share_a_kept_alive_connection(hooks: HookStack) -> None:
    with connect(hooks) as conn, conn.makefile("rb") as stream:
        conn.sendall(request("k-1"))
        first = response(stream)
        conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        health = response(stream)
        conn.sendall(request("k-1") + request("k-2", extra="x-note: another\r\n"))
        again, second = response(stream), response(stream)
    assert (first[0], first[1]["x-routines-delivery"], first[2]) == (202, "queued", b"")
    assert "connection" not in first[1] and "date" in first[1] and first[1]["server"] == "uvicorn"
    assert health[0] == 200
    assert (again[0], again[1]["x-routines-delivery"]) == (200, "duplicate: claimed before, not run again")
    assert (second[0], second[1]["x-routines-delivery"]) == (202, "queued")
    assert stored(hooks, "k-1") == body_of("k-1") and stored(hooks, "k-2") == body_of("k-2")


def test_pipelined_requests_are_answered_in_order(hooks: HookStack) -> None:
    """A request behind an unanswered webhook waits (uvicorn's pipeline), whichever way it is served."""
    with connect(hooks) as conn, conn.makefile("rb") as stream:
        conn.sendall(
            request("p-1")
            + b"GET /api/routines HTTP/1.1\r\nhost: x\r\n\r\n"
            + request("p-2")
            + request("p-1")
            + request("p-3", b"[1]")
        )
        answers = [response(stream) for _ in range(5)]
    assert [a[0] for a in answers] == [202, 200, 202, 200, 400]
    assert json.loads(answers[1][2])["routines"][0]["name"] == "labelled"
    assert "not a JSON object" in json.loads(answers[4][2])["error"]
    assert (stored(hooks, "p-1"), stored(hooks, "p-2"), stored(hooks, "p-3")) == (body_of("p-1"), body_of("p-2"), None)


def test_connection_close_and_http_1_0_close_after_the_answer(hooks: HookStack) -> None:
    for guid, raw in [
        ("c-1", request("c-1", extra="connection: close\r\n")),
        ("c-2", request("c-2").replace(b"HTTP/1.1", b"HTTP/1.0", 1)),
    ]:
        with connect(hooks) as conn, conn.makefile("rb") as stream:
            conn.sendall(raw)
            status, headers, _ = response(stream)
            assert (status, headers["connection"]) == (202, "close"), guid
            assert stream.read() == b"", "the server closed the connection"
        assert stored(hooks, guid) == body_of(guid)


def test_a_chunked_body_is_gathered_whole(hooks: HookStack) -> None:
    with connect(hooks) as conn, conn.makefile("rb") as stream:
        conn.sendall(request("ch-1", chunked=True))
        assert response(stream)[0] == 202
    assert stored(hooks, "ch-1") == body_of("ch-1")


def test_expect_100_continue_is_answered_and_queued(hooks: HookStack) -> None:
    raw = request("e-1", extra="expect: 100-continue\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    with connect(hooks) as conn, conn.makefile("rb") as stream:
        conn.sendall(head + b"\r\n\r\n")
        assert stream.readline().startswith(b"HTTP/1.1 100 ")
        assert stream.readline() == b"\r\n"
        conn.sendall(body)
        status, headers, _ = response(stream)
    assert (status, headers["x-routines-delivery"]) == (202, "queued")


def test_a_client_gone_mid_body_queues_nothing_and_the_server_goes_on(hooks: HookStack) -> None:
    raw = request("gone-1")
    with connect(hooks) as conn:
        conn.sendall(raw[: len(raw) - 10])
    with connect(hooks) as conn, conn.makefile("rb") as stream:
        conn.sendall(request("after-1"))
        assert response(stream)[0] == 202
    assert stored(hooks, "gone-1") is None and stored(hooks, "after-1") == body_of("after-1")


def test_a_webhook_body_over_the_limit_is_refused_and_the_connection_stays_usable(hooks: HookStack) -> None:
    with connect(hooks) as conn, conn.makefile("rb") as stream:
        conn.sendall(request("big-1").split(b"content-length")[0] + b"transfer-encoding: chunked\r\n\r\n")
        block = b"%x\r\n%s\r\n" % (1024 * 1024, b" " * (1024 * 1024))

        def send_body() -> None:
            for _ in range(27):
                conn.sendall(block)
            conn.sendall(b"0\r\n\r\n")

        sender = threading.Thread(target=send_body)
        sender.start()
        status, _, body = response(stream)
        sender.join(30)
        assert status == 413 and "26214400-byte limit" in json.loads(body)["error"]
        conn.sendall(request("big-2"))
        assert response(stream)[0] == 202
    assert stored(hooks, "big-1") is None


def test_shutdown_waits_for_an_answer_being_queued(tmp_path: Path, redis_url: str) -> None:
    """Redis paused (CLIENT PAUSE WRITE): the delivery's claim is in flight when the server is told to stop;
    it still answers 202 once Redis resumes, and then closes the connection."""
    routines = tmp_path / "routines"
    routines.mkdir()
    (routines / "labelled.md").write_text(ROUTINE)
    admin = redis.Redis.from_url(redis_url)
    with (
        webhook_stack(tmp_path, redis_url, routines_dir=routines) as stack,
        connect(stack) as conn,
        conn.makefile("rb") as stream,
    ):
        conn.sendall(request("warm"))
        assert response(stream)[0] == 202
        admin.client_pause(1500, all=False)  # writes only
        conn.sendall(request("s-1"))
        deadline = time.monotonic() + 10
        while blocked(admin) == 0:  # the claim waits for Redis
            assert time.monotonic() < deadline, "the delivery never reached Redis"
            time.sleep(0.01)
        stopping = threading.Thread(target=stack.stop_web)
        stopping.start()
        status, headers, _ = response(stream)
        assert (status, headers.get("connection")) == (202, "close")
        assert stream.read() == b""
        stopping.join(10)
    admin.close()
    assert stored(stack, "s-1") == body_of("s-1")


class _Failing(GitHubWebhook):
    async def reply(self, services: Services, headers: Headers, body: bytes) -> Reply:
        raise RuntimeError("boom")


def test_an_unexpected_error_answers_500_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"services": object()}

    failing = Starlette(routes=[Route(PATH, _Failing(), methods=["POST"])], lifespan=lifespan)
    with (
        serve_in_thread(failing, http="httptools") as served,
        socket.create_connection(("127.0.0.1", served.port), timeout=10) as conn,
        conn.makefile("rb") as stream,
    ):
        conn.sendall(request("x-1"))
        status, _, body = response(stream)
        conn.sendall(b"GET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n")
        assert response(stream)[0] == 404, "other paths still reach the ASGI app"
    assert status == 500 and "internal error" in json.loads(body)["error"]
    assert any("the webhook failed" in r.message and r.exc_info for r in caplog.records)
