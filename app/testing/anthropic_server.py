"""An Anthropic Messages API test server that plays scripted sessions (see app.models.scripts).

`create_app(state)` serves `POST /v1/messages` like the real API: an API key (x-api-key, or
`Authorization: Bearer` as SDK 2.x sends it), the anthropic-version header, request validation
with Anthropic's error shapes, tool_use/tool_result pairing, streaming (SSE) and plain JSON,
injected 429/529 faults with short retry-after headers, and usage with prompt-cache accounting.
Every request is recorded in `state.requests`.

Run it for your own tests: `python -m app.testing.anthropic_server --port 8089 --script session.yml`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.core.domain import JSON
from app.models.scripts import (
    Script,
    Turn,
    bash,
    bash_restart,
    check_messages,
    edit_create,
    edit_insert,
    edit_str_replace,
    edit_view,
    estimate_tokens,
    load_script,
    load_scripts,
    play,
    select_script,
    text,
    tool_use,
    turn_index,
)

__all__ = [
    "AnthropicState",
    "RecordedRequest",
    "Script",
    "Turn",
    "bash",
    "bash_restart",
    "create_app",
    "edit_create",
    "edit_insert",
    "edit_str_replace",
    "edit_view",
    "load_script",
    "load_scripts",
    "text",
    "tool_use",
]

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {429: "Number of request tokens has exceeded your per-minute rate limit", 529: "Overloaded"}
RECORDED_HEADERS = ("x-api-key", "anthropic-version", "anthropic-beta", "user-agent", "x-stainless-retry-count")
MAX_BREAKPOINTS = 4


@dataclass
class RecordedRequest:
    """One request the server received, and the status it answered."""

    body: JSON
    headers: dict[str, str]
    time: float
    status: int = 0
    api_key: str = ""


@dataclass
class AnthropicState:
    """Scripts to play, settings, and what happened. `api_keys` None accepts any non-empty key."""

    scripts: list[Script] = field(default_factory=list)
    api_keys: set[str] | None = None
    retry_after_ms: int = 10
    min_cache_tokens: int = 1024
    min_cache_tokens_haiku: int = 2048
    context_window: int | None = None  # a request with more input tokens gets the API's 400 "prompt is too long"
    requests: list[RecordedRequest] = field(default_factory=list)
    cached_prefixes: set[str] = field(default_factory=set)
    _faults_used: dict[tuple[int, int], int] = field(default_factory=dict, init=False, repr=False)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1), init=False, repr=False)

    def add_script(self, script: Script) -> Script:
        self.scripts.append(script)
        return script

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):04d}"

    def min_cache_tokens_for(self, model: str) -> int:
        return self.min_cache_tokens_haiku if "haiku" in model else self.min_cache_tokens

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.requests]


def create_app(state: AnthropicState) -> Starlette:
    """The test server as an ASGI app; `state` is read and written by every request."""

    async def messages(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k in RECORDED_HEADERS}
        try:
            raw = await request.body()
        except ClientDisconnect:  # the client died mid-body: the real API never saw a request either
            return Response(status_code=499)
        record = RecordedRequest({}, headers, time.time(), api_key=_api_key(request))
        state.requests.append(record)
        try:
            record.body = json.loads(raw)
        except ValueError:
            return _error(record, 400, "There was an error parsing the body of your request: it is not JSON")
        response = await _answer(state, request, record)
        record.status = response.status_code
        return response

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = f"{request.method} {request.url.path} is not served here; use POST /v1/messages"
        return _error(RecordedRequest({}, {}, time.time()), status, message)

    routes = [Route("/v1/messages", messages, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


async def _answer(state: AnthropicState, request: Request, record: RecordedRequest) -> Response:
    key = record.api_key
    if not key:
        return _error(record, 401, "x-api-key header is required")
    if state.api_keys is not None and key not in state.api_keys:
        return _error(record, 401, "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return _error(record, 400, "anthropic-version: header is required")
    body = record.body
    problem = _check_body(body) or check_messages(body["messages"])
    if problem:
        return _error(record, 400, problem)
    if state.context_window is not None:
        total = sum(tokens for _key, tokens, _breakpoint in _units(body))
        if total > state.context_window:
            return _error(record, 400, f"prompt is too long: {total} tokens > {state.context_window} maximum")
    script = select_script(state.scripts, body.get("system"), body["messages"])
    if script is None:
        return _error(record, 400, "no script matches this request; add a default script (match None) to the server")
    index = turn_index(body["messages"])
    turn = script.turn_at(index)
    if turn is None:
        return _error(
            record,
            400,
            f"script {script.describe()} has {len(script.turns)} turns and this conversation already has "
            f"{index} assistant turns; add turns or set loop_last",
        )
    fault_key = (id(script), index)
    used = state._faults_used.get(fault_key, 0)
    if used < len(turn.faults):
        state._faults_used[fault_key] = used + 1
        return _fault(state, record, turn.faults[used])
    if turn.delay_ms:
        await asyncio.sleep(turn.delay_ms / 1000)
    message = _message(state, body, turn)
    if body.get("stream"):
        record.status = 200
        return StreamingResponse(_sse(message), media_type="text/event-stream", headers=_ids(state))
    return JSONResponse(message, headers=_ids(state))


def _api_key(request: Request) -> str:
    """The key from x-api-key, or from `Authorization: Bearer` (how SDK 2.x sends an api_key)."""
    bearer = request.headers.get("authorization", "")
    return request.headers.get("x-api-key") or (bearer[7:].strip() if bearer.lower().startswith("bearer ") else "")


def _check_body(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body: Input should be an object"
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["model"], str) or not body["model"]:
        return "model: Input should be a valid string"
    if not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool) or body["max_tokens"] < 1:
        return "max_tokens: Input should be an integer greater than or equal to 1"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or a list of text blocks"
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) and "name" in t for t in tools)):
        return "tools: Input should be a list of tool definitions with a name"
    breakpoints = sum(1 for unit in _units(body) if unit[2])
    if breakpoints > MAX_BREAKPOINTS:
        return f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {breakpoints}."
    return None


def _units(body: JSON) -> list[tuple[str, int, bool]]:
    """The prompt in cache order (tools, system, messages) as (canonical json, tokens, is breakpoint)."""
    parts: list[tuple[Any, Any]] = [("tool", t) for t in body.get("tools") or []]
    system = body.get("system")
    parts += [("system", b) for b in (system if isinstance(system, list) else [system] if system else [])]
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        role = message.get("role") if isinstance(message, dict) else None
        parts += [(role, b) for b in (content if isinstance(content, list) else [content])]
    units = []
    for kind, part in parts:
        bare = {k: v for k, v in part.items() if k != "cache_control"} if isinstance(part, dict) else part
        key = json.dumps([kind, bare], sort_keys=True, ensure_ascii=False)
        units.append((key, estimate_tokens(bare), isinstance(part, dict) and bool(part.get("cache_control"))))
    return units


def _usage(state: AnthropicState, body: JSON) -> dict[str, int]:
    """Input token counts as the API splits them: uncached input, cache writes, cache reads."""
    digest = hashlib.sha256(str(body["model"]).encode())
    prefixes: list[tuple[str, int, bool]] = []
    total = 0
    for key, tokens, breakpoint in _units(body):
        digest.update(key.encode())
        total += tokens
        prefixes.append((digest.hexdigest(), total, breakpoint))
    read_at = -1
    for b in (i for i, p in enumerate(prefixes) if p[2]):
        # like the API, a breakpoint also finds cache entries up to 20 blocks before it
        hits = [j for j in range(b, max(-1, b - 20), -1) if prefixes[j][0] in state.cached_prefixes]
        read_at = max([read_at, *hits[:1]])
    minimum = state.min_cache_tokens_for(str(body["model"]))
    writable = [i for i, p in enumerate(prefixes) if p[2] and p[1] >= minimum]
    read = prefixes[read_at][1] if read_at >= 0 else 0
    write_at = max(writable, default=-1)
    created = prefixes[write_at][1] - read if write_at > read_at else 0
    state.cached_prefixes.update(prefixes[i][0] for i in writable)
    return {
        "input_tokens": total - read - created,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
    }


def _message(state: AnthropicState, body: JSON, turn: Turn) -> JSON:
    content = play(turn, lambda: state.next_id("toolu_"))
    usage: JSON = {**_usage(state, body), "output_tokens": estimate_tokens(content)}
    served = [str(b.get("name")) for b in content if b.get("type") == "server_tool_use"]
    if served:
        usage["server_tool_use"] = {
            "web_search_requests": served.count("web_search"),
            "web_fetch_requests": served.count("web_fetch"),
        }
    return {
        "id": state.next_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": turn.final_stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


async def _sse(message: JSON) -> AsyncIterator[bytes]:
    """The real API's event sequence for one message."""
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    yield _event("message_start", {"type": "message_start", "message": start})
    if not message["content"]:
        yield _event("ping", {"type": "ping"})
    for index, block in enumerate(message["content"]):
        for event, data in _block_events(index, block):
            yield _event(event, data)
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield _event("message_delta", {"type": "message_delta", "delta": delta, "usage": message["usage"]})
    yield _event("message_stop", {"type": "message_stop"})


def _block_events(index: int, block: JSON) -> Iterator[tuple[str, JSON]]:
    kind = block.get("type")
    if kind == "text":
        deltas = [{"type": "text_delta", "text": piece} for piece in _chunks(block["text"])]
        start: JSON = {"type": "text", "text": ""}
    elif kind in ("tool_use", "server_tool_use"):
        raw = json.dumps(block["input"], ensure_ascii=False)
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in ["", *_chunks(raw)]]
        start = {**block, "input": {}}
    else:
        deltas, start = [], block
    yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
    if index == 0:
        yield "ping", {"type": "ping"}
    for delta in deltas:
        yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    yield "content_block_stop", {"type": "content_block_stop", "index": index}


def _chunks(s: str, size: int = 24) -> list[str]:
    return [s[i : i + size] for i in range(0, len(s), size)]


def _event(name: str, data: JSON) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _ids(state: AnthropicState) -> dict[str, str]:
    return {"request-id": state.next_id("req_")}


def _error(record: RecordedRequest, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    record.status = status
    kind = ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _fault(state: AnthropicState, record: RecordedRequest, status: int) -> Response:
    headers = {"retry-after": str(max(1, state.retry_after_ms // 1000)), "retry-after-ms": str(state.retry_after_ms)}
    return _error(record, status, ERROR_MESSAGES.get(status, "Internal server error"), headers)


def main(argv: list[str] | None = None) -> None:
    """`python -m app.testing.anthropic_server --port N --script FILE...`: serve scripts until stopped."""
    import uvicorn

    parser = argparse.ArgumentParser(description="Anthropic Messages API test server playing scripted sessions")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--script", nargs="+", action="extend", default=[], help="YAML or JSON script files")
    parser.add_argument("--api-key", action="append", help="accept only this key (repeatable); default: any")
    parser.add_argument("--min-cache-tokens", type=int, default=1024)
    args = parser.parse_args(argv)
    state = AnthropicState(api_keys=set(args.api_key) if args.api_key else None, min_cache_tokens=args.min_cache_tokens)
    for path in args.script:
        for script in load_scripts(path):
            state.add_script(script)
    print(f"serving {len(state.scripts)} scripts on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
