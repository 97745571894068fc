"""An MCP test server: a small issue tracker over streamable HTTP, built with the official `mcp` SDK.

`create_app(state)` serves MCP at `/mcp` with two tools over `state.issues`: `search_issues(query)`
(issues whose title or body contains the query) and `get_issue(id)` (one issue, an error result
when it does not exist). With `state.tokens` set, every HTTP request must carry
`Authorization: Bearer <one of them>` or is answered 401, as a hosted connector would. Tool calls
are recorded in `state.calls`, the bearer tokens seen in `state.tokens_seen`.

Run it for your own routines: `python -m app.testing.mcp_server --port 8090 --token secret`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def default_issues() -> list[dict[str, str]]:
    return [
        {"id": "ENG-1", "title": "Crash when the config file is empty", "state": "open", "body": "KeyError: 'name'"},
        {"id": "ENG-2", "title": "Slow start with many routines", "state": "open", "body": "Startup takes 9 s"},
        {"id": "ENG-3", "title": "Typo in the README", "state": "closed", "body": "'recieve' should be 'receive'"},
    ]


@dataclass
class McpState:
    """The tracker's data and what happened. `tokens` None accepts requests without credentials."""

    issues: list[dict[str, str]] = field(default_factory=default_issues)
    tokens: set[str] | None = None
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    tokens_seen: list[str] = field(default_factory=list)
    refused: int = 0


def create_app(state: McpState, *, name: str = "tracker") -> ASGIApp:
    """The server as an ASGI app (its lifespan runs the SDK's session manager)."""
    server = MCPServer(name, instructions="A small issue tracker for tests.", log_level="WARNING")

    @server.tool()
    def search_issues(query: str) -> str:
        """Search issues whose title or body contains `query` (case-insensitive); returns a JSON list."""
        state.calls.append(("search_issues", {"query": query}))
        found = [
            {"id": i["id"], "title": i["title"], "state": i["state"]}
            for i in state.issues
            if query.lower() in (i["title"] + "\n" + i["body"]).lower()
        ]
        return json.dumps(found)

    @server.tool()
    def get_issue(id: str) -> str:
        """One issue by its id (e.g. ENG-1), with its body, as JSON."""
        state.calls.append(("get_issue", {"id": id}))
        for issue in state.issues:
            if issue["id"] == id:
                return json.dumps(issue)
        raise ToolError(f"no issue {id!r}; search_issues lists the ids")

    return _bearer(server.streamable_http_app(), state)


def _bearer(app: ASGIApp, state: McpState) -> ASGIApp:
    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode()
            token = header[7:].strip() if header.lower().startswith("bearer ") else ""
            if token:
                state.tokens_seen.append(token)
            if state.tokens is not None and token not in state.tokens:
                state.refused += 1
                await _unauthorized(send)
                return
        await app(scope, receive, send)

    return guarded


async def _unauthorized(send: Send) -> None:
    body = json.dumps({"error": "invalid_token", "error_description": "a valid bearer token is required"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b'Bearer error="invalid_token"'),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    """`python -m app.testing.mcp_server --port N [--token T]`: serve the tracker until stopped."""
    import uvicorn

    parser = argparse.ArgumentParser(description="MCP test server: an in-memory issue tracker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--token", action="append", help="accept only this bearer token (repeatable)")
    args = parser.parse_args(argv)
    state = McpState(tokens=set(args.token) if args.token else None)
    print(f"serving MCP on http://{args.host}:{args.port}/mcp", flush=True)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
