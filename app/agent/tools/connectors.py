"""Connectors: a routine's MCP servers, reached by the runner (outside the sandbox) over streamable HTTP.

`open_connectors(routine.connectors, secrets)` opens one MCP session per connector with the
official `mcp` SDK, sending the connector's vault secret as `Authorization: Bearer`, and lists
its tools. They are offered to the model as `<connector>__<tool>`; a call runs on the
connector and its text comes back fenced as untrusted data. A failed call — refused, timed out,
or the server gone — is a tool error for the model, never a failure of the run; a connector
that cannot be opened fails the run before the agent starts (ConnectorError). A session whose
server went away (restarted, redeployed) is opened again by the next call, up to `MAX_REOPENS`
times a run; one whose credentials were refused is not.

Each session lives in its own task: the SDK's transport runs in an anyio task group whose
failure cancels the task that entered it, and that must not be the agent's.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from app.agent.prompts import fence
from app.core.domain import JSON, Connector
from app.core.errors import RoutinesError, ToolError
from app.core.ports import Emit, Redacts, SecretLookup

# The MCP SDK takes about a second to import; it is imported when a run opens a connector, so
# the CLI, the web process and runs without connectors do not pay for it.
if TYPE_CHECKING:
    import httpx2
    from mcp import Client
    from mcp_types import CallToolResult, Tool

SEPARATOR = "__"
MAX_REOPENS = 3
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
MAX_NAME = 64


class ConnectorError(RoutinesError):
    """A connector could not be opened: no secret, a secret not meant for its host, or the server refused."""


@dataclass(frozen=True)
class ConnectorTool:
    """One tool of a connector as the model sees it (`api_name`) and as the server knows it (`tool`)."""

    connector: str
    tool: str
    api_name: str
    definition: JSON


class Connectors:
    """The open connectors of one run: their tool definitions, and calls routed by API name."""

    def __init__(self, sessions: Sequence[_Session]) -> None:
        self._sessions = {s.connector.name: s for s in sessions}
        self.tools: dict[str, ConnectorTool] = {}
        for session in sessions:
            for tool in session.tools:
                api_name = _api_name(session.connector.name, tool.name, self.tools)
                definition = {
                    "name": api_name,
                    "description": f"[connector {session.connector.name}] {tool.description or tool.name}",
                    "input_schema": tool.input_schema or {"type": "object", "properties": {}},
                }
                self.tools[api_name] = ConnectorTool(session.connector.name, tool.name, api_name, definition)

    def definitions(self) -> list[JSON]:
        return [t.definition for t in self.tools.values()]

    def connector_of(self, api_name: str) -> str | None:
        """The connector that serves `api_name`, or None when it is not a connector tool."""
        tool = self.tools.get(api_name)
        return tool.connector if tool else None

    async def call(self, api_name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """Call a connector tool: (text for the model, is_error). Raises ToolError if the call did not happen."""
        tool = self.tools.get(api_name)
        if tool is None:
            raise ToolError(f"{api_name!r} is not a connector tool of this run")
        result = await self._sessions[tool.connector].call(tool.tool, arguments)
        text = result_text(result)
        return fence(text, f"connector:{tool.connector}"), result.is_error


@asynccontextmanager
async def open_connectors(
    connectors: Sequence[Connector],
    secret: SecretLookup | None,
    *,
    redactor: Redacts | None = None,
    emit: Emit | None = None,
    call_timeout_s: float = 120.0,
    connect_timeout_s: float = 30.0,
) -> AsyncIterator[Connectors]:
    """Open every connector and list its tools; close them all on exit. Raises ConnectorError.

    `secret` is the vault; a connector's secret is sent only when its host is among the
    secret's domains. Its value is added to `redactor`, and `emit` records `connector.open`.
    """
    sessions: list[_Session] = []
    try:
        for connector in connectors:
            token = await _token(connector, secret)
            if token and redactor is not None:
                redactor.add(connector.secret or "", token)
            session = _Session(connector, token, call_timeout_s, connect_timeout_s)
            sessions.append(session)
            await session.start()
            if emit is not None:
                await emit("connector.open", {"connector": connector.name, "tools": [t.name for t in session.tools]})
        yield Connectors(sessions)
    finally:
        for session in reversed(sessions):
            await session.close()


async def _token(connector: Connector, secret: SecretLookup | None) -> str | None:
    if connector.secret is None:
        return None
    if secret is None:
        raise ConnectorError(
            f"connector {connector.name} needs the secret {connector.secret}, but no vault is configured; "
            "set ROUTINES_SECRET_KEY and store the secret with `routines secrets set`"
        )
    try:
        stored = await secret.get(connector.secret)
    except RoutinesError as exc:
        raise ConnectorError(f"connector {connector.name}: {exc}") from None
    host = (urlsplit(connector.url).hostname or "").lower()
    if not _host_matches(host, stored.domains):
        raise ConnectorError(
            f"connector {connector.name}: the secret {connector.secret} may only be sent to "
            f"{', '.join(stored.domains)}, not {host}; add {host} to its domains with `routines secrets set`"
        )
    return stored.value


def _host_matches(host: str, domains: Sequence[str]) -> bool:
    """The vault's rule (as the egress proxy applies it): exact host, or a subdomain of `*.domain`."""
    for domain in domains:
        domain = domain.lower().rstrip(".")
        if host == domain or (domain.startswith("*.") and host.endswith(domain[1:]) and host != domain[2:]):
            return True
    return False


def _api_name(connector: str, tool: str, taken: dict[str, ConnectorTool]) -> str:
    """`<connector>__<tool>` with characters the API refuses replaced, at most 64, unique in `taken`."""
    base = _NAME_CHARS.sub("_", f"{connector}{SEPARATOR}{tool}")[:MAX_NAME]
    name, n = base, 2
    while name in taken:
        suffix = f"_{n}"
        name, n = base[: MAX_NAME - len(suffix)] + suffix, n + 1
    return name


def result_text(result: CallToolResult) -> str:
    """A tool result's content as text: text blocks as they are, other blocks described."""
    from mcp_types import EmbeddedResource, ImageContent, TextContent, TextResourceContents

    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(block, ImageContent):
            parts.append(f"[image {block.mime_type}, {len(block.data) * 3 // 4} bytes, not shown]")
        elif isinstance(block, EmbeddedResource) and isinstance(block.resource, TextResourceContents):
            parts.append(f"[resource {block.resource.uri}]\n{block.resource.text}")
        else:
            parts.append(f"[{block.type} content, not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts) or "(no content)"


class _Session:
    """One connector's MCP session, owned by a task of its own that serves calls from a queue."""

    def __init__(
        self, connector: Connector, token: str | None, call_timeout_s: float, connect_timeout_s: float
    ) -> None:
        self.connector = connector
        self.tools: list[Tool] = []
        self._token = token
        self._call_timeout_s = call_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._jobs: asyncio.Queue[tuple[str, dict[str, Any], asyncio.Future[CallToolResult]] | None] = asyncio.Queue()
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self._statuses: list[int] = []
        self._gone: str | None = None
        self._refused = False
        self._closed = False
        self._reopens = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._main(), name=f"connector:{self.connector.name}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self._connect_timeout_s)
        except TimeoutError:
            self._ready.cancel()
            await self._stop()
            raise ConnectorError(
                f"connector {self.connector.name} did not answer within {self._connect_timeout_s:g} s at "
                f"{self.connector.url}; check the url and that the server is up"
            ) from None

    async def call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        if self._closed or self._task is None:
            raise ToolError(f"connector {self.connector.name} is closed")
        if self._gone is not None or self._task.done():
            await self._reopen()
        future: asyncio.Future[CallToolResult] = asyncio.get_running_loop().create_future()
        await self._jobs.put((tool, arguments, future))
        return await future

    async def _reopen(self) -> None:
        """A new session after the server went away; ToolError when it is refused, spent or fails."""
        gone = self._gone or "the session ended"
        if self._refused or self._reopens >= MAX_REOPENS:
            raise ToolError(f"connector {self.connector.name} is unavailable for the rest of this run ({gone})")
        self._reopens += 1
        self._ready = asyncio.get_running_loop().create_future()
        self._gone, self._jobs = None, asyncio.Queue()
        try:
            await self.start()
        except ConnectorError as exc:
            self._gone = self._gone or str(exc)
            raise ToolError(
                f"connector {self.connector.name} went away ({gone}) and could not be opened again: {exc}"
            ) from None

    async def close(self) -> None:
        self._closed = True
        await self._stop()

    async def _stop(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._jobs.put(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _main(self) -> None:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        timeout = httpx2.Timeout(self._connect_timeout_s, read=max(self._call_timeout_s, 300.0))
        try:
            async with (
                httpx2.AsyncClient(headers=headers, timeout=timeout, event_hooks={"response": [self._status]}) as http,
                Client(
                    streamable_http_client(self.connector.url, http_client=http),
                    read_timeout_seconds=self._connect_timeout_s,
                ) as client,
            ):
                self.tools = await _list_tools(client)
                self._ready.set_result(None)
                await self._serve(client)
        except BaseException as exc:  # the SDK wraps transport failures in (nested) exception groups
            self._refused = any(status in (401, 403) for status in self._statuses)
            self._gone = self._describe(exc)
            if not self._ready.done():
                self._ready.set_exception(ConnectorError(f"connector {self.connector.name}: {self._gone}"))
            self._fail_waiting()
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _serve(self, client: Client) -> None:
        while (job := await self._jobs.get()) is not None:
            tool, arguments, future = job
            self._statuses.clear()
            try:
                result = await client.call_tool(tool, arguments, read_timeout_seconds=self._call_timeout_s)
            except Exception as exc:  # MCPError, timeouts, invalid results: an answer for the model
                future.set_exception(ToolError(f"{self.connector.name}: {tool} failed: {self._describe(exc)}"))
            except BaseException:
                future.set_exception(ToolError(f"{self.connector.name}: the connection broke during {tool}"))
                raise
            else:
                future.set_result(result)

    def _fail_waiting(self) -> None:
        while not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job is not None and not job[2].done():
                job[2].set_exception(ToolError(f"connector {self.connector.name} is unavailable ({self._gone})"))

    async def _status(self, response: httpx2.Response) -> None:
        self._statuses.append(response.status_code)

    def _describe(self, exc: BaseException) -> str:
        refused = next((s for s in reversed(self._statuses) if s in (401, 403)), None)
        if refused is not None:
            secret = f"the secret {self.connector.secret}" if self.connector.secret else "no credentials"
            return f"the server refused {secret} ({refused}); check the vault secret and its scopes"
        leaf = _leaf(exc)
        return f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__


async def _list_tools(client: Client) -> list[Tool]:
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(100):
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
