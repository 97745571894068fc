"""The Toolbox: the tools a routine enabled, their definitions, and the answer to each call."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.agent.tools.bash import BASH, run_bash
from app.agent.tools.bash import DEFINITION as BASH_DEFINITION
from app.agent.tools.connectors import Connectors
from app.agent.tools.editor import EDITOR, editor_definition
from app.agent.tools.memory import MEMORY, Memory
from app.agent.tools.server import SERVER_TOOLS, server_definitions
from app.core.domain import JSON
from app.core.errors import ToolError
from app.core.ports import Hands


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
        self._server = server_definitions(enabled, server_tool_max_uses)

    @property
    def names(self) -> list[str]:
        """The API names of the enabled tools."""
        return [d["name"] for d in self.definitions()]

    def definitions(self) -> list[JSON]:
        """The `tools` list for a Messages request."""
        tools: list[JSON] = []
        if self._bash:
            tools.append(dict(BASH_DEFINITION))
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
                output, exit_code, is_error = await run_bash(self._hands, params, self._command_timeout_s)
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


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    cut = len(text) - 2 * half
    note = f"\n[... {cut} characters cut; redirect long output to a file and read it in parts ...]\n"
    return text[:half] + note + text[-half:]
