"""The MCP test server, driven by the official `mcp` client over streamable HTTP and by raw HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent

from app.testing.mcp_server import McpState, create_app
from app.testing.serve import Served, serve_in_thread

TOKEN = "mcp-test-token-0123"


@pytest.fixture
def state() -> McpState:
    return McpState(tokens={TOKEN})


@pytest.fixture
def server(state: McpState) -> Iterator[Served]:
    with serve_in_thread(create_app(state)) as served:
        yield served


@asynccontextmanager
async def connect(server: Served) -> AsyncIterator[Client]:
    """A client session; not a fixture, since anyio scopes must close in the task that opened them."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
        Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as mcp,
    ):
        yield mcp


def text_of(result: object) -> str:
    content = getattr(result, "content", [])
    return "\n".join(b.text for b in content if isinstance(b, TextContent))


async def test_lists_and_runs_its_tools(server: Served, state: McpState) -> None:
    async with connect(server) as client:
        await check_tools(client)
    assert state.calls == [("search_issues", {"query": "crash"}), ("get_issue", {"id": "ENG-3"})]
    assert set(state.tokens_seen) == {TOKEN}


async def check_tools(client: Client) -> None:
    listed = {t.name: t for t in (await client.list_tools()).tools}
    assert set(listed) == {"search_issues", "get_issue"}
    assert listed["search_issues"].input_schema["required"] == ["query"]
    found = await client.call_tool("search_issues", {"query": "crash"})
    assert not found.is_error and json.loads(text_of(found)) == [
        {"id": "ENG-1", "title": "Crash when the config file is empty", "state": "open"}
    ]
    issue = await client.call_tool("get_issue", {"id": "ENG-3"})
    assert json.loads(text_of(issue))["body"] == "'recieve' should be 'receive'"


async def test_a_missing_issue_is_an_error_result(server: Served) -> None:
    async with connect(server) as client:
        missing = await client.call_tool("get_issue", {"id": "ENG-404"})
    assert missing.is_error and "no issue 'ENG-404'" in text_of(missing)


async def test_requests_without_the_token_are_refused(server: Served, state: McpState) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient() as http:
        bare = await http.post(f"{server.url}/mcp", json=init, headers=headers)
        wrong = await http.post(f"{server.url}/mcp", json=init, headers={**headers, "authorization": "Bearer nope"})
    assert bare.status_code == wrong.status_code == 401
    assert bare.headers["www-authenticate"].startswith("Bearer")
    assert state.refused == 2 and state.calls == []
