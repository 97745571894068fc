"""The tools a run offers the model, and how each call is answered.

Client tools: bash and the editor (str_replace_based_edit_tool) act through the run's `Hands`,
inside its sandbox (the editor is app.hands.editor, run where the files are); memory
(memory_20250818, the run's `/memories` folder, see app.agent.memory) and connector tools
(`<connector>__<tool>`, see app.agent.connectors) run here. Server tools (web_search, web_fetch)
are only declared: Anthropic runs them, outside our egress proxy, so they are offered only when
the routine lists them; `server_tool_events` turns their uses in an assistant turn into events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.core.domain import JSON
from app.core.errors import ToolError
from app.core.ports import Hands

if TYPE_CHECKING:
    from app.agent.connectors import Connectors
    from app.agent.memory import Memory

BASH = "bash"
EDITOR = "str_replace_based_edit_tool"
MEMORY = "memory"
# Anthropic-run tools: the routine's name → the versioned tool type the Messages API takes.
SERVER_TOOLS = {"web_search": "web_search_20250305", "web_fetch": "web_fetch_20250910"}


@dataclass
class ToolOutput:
    """What one tool call produced: the API's tool_result block and the full text for the event log."""

    result: JSON
    output: str
    is_error: bool
    exit_code: int | None = None
    connector: str | None = None


class Toolbox:
    """The tools a routine enabled and how to run them.

    `tools` names: "bash", "edit", "memory" (needs `memory`), "web_search", "web_fetch"; others are
    ignored. Every tool of `connectors` is offered. Server tools may be used `server_tool_max_uses`
    times per model request. Tool errors never raise: they come back as `is_error` results the
    model can act on; an OSError of a tool (a file the agent made) is such a result too.
    """

    def __init__(
        self,
        tools: Iterable[str],
        *,
        hands: Hands,
        command_timeout_s: float = 600.0,
        max_result_chars: int = 30_000,
        max_view_characters: int | None = None,
        memory: Memory | None = None,
        connectors: Connectors | None = None,
        server_tool_max_uses: int = 10,
    ) -> None:
        enabled = set(tools)
        self._hands = hands
        self._command_timeout_s = command_timeout_s
        self._max_result_chars = max_result_chars
        self._max_view_characters = max_view_characters
        self._bash = BASH in enabled
        self._editor = "edit" in enabled
        self._memory = memory if MEMORY in enabled else None
        self._connectors = connectors
        self._server = [
            {"type": kind, "name": name, "max_uses": server_tool_max_uses}
            for name, kind in SERVER_TOOLS.items()
            if name in enabled
        ]

    @property
    def names(self) -> list[str]:
        """The API names of the enabled tools."""
        return [d["name"] for d in self.definitions()]

    def definitions(self) -> list[JSON]:
        """The `tools` list for a Messages request."""
        tools: list[JSON] = []
        if self._bash:
            tools.append({"type": "bash_20250124", "name": BASH})
        if self._editor:
            tools.append(editor_definition(self._max_view_characters))
        if self._memory is not None:
            tools.append(self._memory.definition())
        tools += [dict(tool) for tool in self._server]
        if self._connectors is not None:
            tools += self._connectors.definitions()
        return tools

    def connector_of(self, name: str) -> str | None:
        """The connector serving tool `name`, or None (for the `connector` field of tool events)."""
        return self._connectors.connector_of(name) if self._connectors is not None else None

    async def execute(self, block: JSON) -> ToolOutput:
        """Run one `tool_use` block; the result's content is cut to `max_result_chars` with a note."""
        exit_code: int | None = None
        name = str(block.get("name"))
        try:
            params = block.get("input")
            if not isinstance(params, dict):
                raise ToolError("the tool input must be a JSON object")
            if name == BASH and self._bash:
                output, exit_code, is_error = await self._run_bash(params)
            elif name == EDITOR and self._editor:
                output, is_error = await self._hands.edit(params, self._max_view_characters), False
            elif name == MEMORY and self._memory is not None:
                output, is_error = await self._memory.run(params), False
            elif self.connector_of(name) is not None and self._connectors is not None:
                output, is_error = await self._connectors.call(name, params)
            elif name in SERVER_TOOLS:
                raise ToolError(f"{name} runs on Anthropic's side when the routine lists it in `tools`; not here")
            else:
                raise ToolError(f"the tool {name!r} is not available in this run; use one of {self.names}")
        except ToolError as exc:
            output, is_error = f"Error: {exc}", True
        except OSError as exc:  # whatever the files the agent made do to a tool, the run goes on
            output, is_error = f"Error: {name} failed: {exc.strerror or exc}", True
        content = _cut(output, self._max_result_chars)
        result = {"type": "tool_result", "tool_use_id": block.get("id", ""), "content": content, "is_error": is_error}
        return ToolOutput(result, output, is_error, exit_code, self.connector_of(name))

    async def _run_bash(self, params: dict[str, Any]) -> tuple[str, int | None, bool]:
        if params.get("restart") is True:
            await self._hands.restart()
            return "The shell was restarted; the working directory and variables are reset.", None, False
        command = params.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ToolError('bash needs {"command": "<shell command>"} or {"restart": true}')
        result = await self._hands.run(command, self._command_timeout_s)
        text = result.output or "(no output)"
        if result.exit_code not in (0, None):
            text = f"{text.rstrip(chr(10))}\nexit code {result.exit_code}"
        return text, result.exit_code, result.timed_out


def server_tool_events(content: list[JSON]) -> list[tuple[str, JSON]]:
    """The events for the server tool uses in an assistant turn's content, in order.

    `server_tool.call` {id, name, input} for each `server_tool_use` block, and `server_tool.result`
    {tool_use_id, type, error, urls} for each `*_tool_result` block Anthropic returned with it.
    """
    events: list[tuple[str, JSON]] = []
    for block in content:
        kind = str(block.get("type", ""))
        if kind == "server_tool_use":
            events.append(("server_tool.call", {k: block.get(k) for k in ("id", "name", "input")}))
        elif kind.endswith("_tool_result") and kind != "tool_result":
            events.append(("server_tool.result", _server_result(block)))
    return events


def _server_result(block: JSON) -> JSON:
    content = block.get("content")
    items = content if isinstance(content, list) else [content] if isinstance(content, dict) else []
    error = next((i.get("error_code") for i in items if isinstance(i, dict) and "error_code" in i), None)
    urls = [str(i["url"]) for i in items if isinstance(i, dict) and i.get("url")]
    return {"tool_use_id": block.get("tool_use_id"), "type": block.get("type"), "error": error, "urls": urls[:20]}


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    cut = len(text) - 2 * half
    note = f"\n[... {cut} characters cut; redirect long output to a file and read it in parts ...]\n"
    return text[:half] + note + text[-half:]


def editor_definition(max_characters: int | None = None) -> JSON:
    """The editor's entry in a Messages request's `tools`."""
    tool: JSON = {"type": "text_editor_20250728", "name": EDITOR}
    if max_characters is not None:
        tool["max_characters"] = max_characters
    return tool
