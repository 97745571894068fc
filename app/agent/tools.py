"""The tools a run offers the model, and how each call is answered.

Client tools run here: bash (confined by the sandbox), the editor (str_replace_based_edit_tool,
confined to the workspace), memory (memory_20250818, confined to the run's `/memories` folder, see
app.agent.memory) and connector tools (`<connector>__<tool>`, see app.agent.connectors). Server
tools (web_search, web_fetch) are only declared: Anthropic runs them, outside our egress proxy, so
they are offered only when the routine lists them; `server_tool_events` turns their uses in an
assistant turn into events.

The editor resolves every path inside the workspace: relative paths are relative to it, absolute
paths must lie under `root` (the workspace's path as the model sees it: the real path for the
local sandbox, the mount point for bwrap) or under the real workspace path. Anything that
resolves outside it after symlinks, or into a `.git` directory, is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from app.domain import JSON
from app.errors import ToolError
from app.ports import Shell

if TYPE_CHECKING:
    from app.agent.connectors import Connectors
    from app.agent.memory import Memory

BASH = "bash"
EDITOR = "str_replace_based_edit_tool"
MEMORY = "memory"
# Anthropic-run tools: the routine's name → the versioned tool type the Messages API takes.
SERVER_TOOLS = {"web_search": "web_search_20250305", "web_fetch": "web_fetch_20250910"}
_SKIPPED_DIRS = frozenset({"node_modules"})


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
    model can act on.
    """

    def __init__(
        self,
        tools: Iterable[str],
        *,
        shell: Shell,
        workspace: Path,
        root: str | None = None,
        command_timeout_s: float = 600.0,
        max_result_chars: int = 30_000,
        max_view_characters: int | None = None,
        memory: Memory | None = None,
        connectors: Connectors | None = None,
        server_tool_max_uses: int = 10,
    ) -> None:
        enabled = set(tools)
        self._shell = shell
        self._command_timeout_s = command_timeout_s
        self._max_result_chars = max_result_chars
        self._bash = BASH in enabled
        self._editor = Editor(workspace, root=root, max_characters=max_view_characters) if "edit" in enabled else None
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
        if self._editor is not None:
            tools.append(self._editor.definition())
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
            elif name == EDITOR and self._editor is not None:
                output, is_error = await asyncio.to_thread(self._editor.run, params), False
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
        content = _cut(output, self._max_result_chars)
        result = {"type": "tool_result", "tool_use_id": block.get("id", ""), "content": content, "is_error": is_error}
        return ToolOutput(result, output, is_error, exit_code, self.connector_of(name))

    async def _run_bash(self, params: dict[str, Any]) -> tuple[str, int | None, bool]:
        if params.get("restart") is True:
            await self._shell.restart()
            return "The shell was restarted; the working directory and variables are reset.", None, False
        command = params.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ToolError('bash needs {"command": "<shell command>"} or {"restart": true}')
        result = await self._shell.run(command, self._command_timeout_s)
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


class Editor:
    """`str_replace_based_edit_tool` (text_editor_20250728): view, create, str_replace, insert."""

    def __init__(self, workspace: Path, *, root: str | None = None, max_characters: int | None = None) -> None:
        self._workspace = workspace
        self._real = workspace.resolve()
        self._root = PurePosixPath(root or str(workspace))
        self._max_characters = max_characters

    def definition(self) -> JSON:
        tool: JSON = {"type": "text_editor_20250728", "name": EDITOR}
        if self._max_characters is not None:
            tool["max_characters"] = self._max_characters
        return tool

    def run(self, params: dict[str, Any]) -> str:
        """Run one editor command; a bad call raises ToolError with a message for the model."""
        command = params.get("command")
        path = self.resolve(_text(params, "path"))
        try:
            if command == "view":
                return self._view(path, params.get("view_range"))
            if command == "create":
                return self._create(path, _text(params, "file_text", allow_empty=True))
            if command == "str_replace":
                new = params.get("new_str") or ""
                return self._str_replace(path, _text(params, "old_str"), str(new))
            if command == "insert":
                text = params["insert_text"] if "insert_text" in params else params.get("new_str")
                return self._insert(path, params.get("insert_line"), text)
        except OSError as exc:
            raise ToolError(f"{self.show(path)}: {exc.strerror or exc}") from None
        raise ToolError(f"unknown command {command!r}; use view, create, str_replace or insert")

    def resolve(self, raw: str) -> Path:
        """The real path for `raw`, or ToolError if it leaves the workspace or enters `.git`."""
        given = PurePosixPath(raw)
        relative: PurePosixPath | None = given if not given.is_absolute() else None
        for base in (self._root, PurePosixPath(self._workspace), PurePosixPath(self._real)):
            if relative is None and given.is_relative_to(base):
                relative = given.relative_to(base)
        if relative is None:
            raise ToolError(f"{raw} is outside the workspace; use a path under {self._root}")
        real = (self._real / relative).resolve()
        if not real.is_relative_to(self._real):
            raise ToolError(f"{raw} resolves outside the workspace; use a path under {self._root}")
        if ".git" in real.relative_to(self._real).parts:
            raise ToolError(f"{raw} is inside .git; the runner manages git, edit the working tree only")
        return real

    def show(self, path: Path) -> str:
        """`path` as the model sees it."""
        return str(self._root / path.relative_to(self._real))

    def _view(self, path: Path, view_range: object) -> str:
        if path.is_dir():
            if view_range is not None:
                raise ToolError("view_range applies to files only, not directories")
            return self._list(path)
        lines = _lines(_read(path, self.show(path)))
        start, end = _view_range(view_range, len(lines), self.show(path))
        numbered = "\n".join(f"{n:6}\t{line}" for n, line in enumerate(lines[start - 1 : end], start))
        if self._max_characters is not None and len(numbered) > self._max_characters:
            numbered = numbered[: self._max_characters] + "\n[... file cut; view a smaller view_range ...]"
        return f"Here's the result of running `cat -n` on {self.show(path)}:\n{numbered}"

    def _list(self, path: Path) -> str:
        entries: list[str] = []
        for child in sorted(path.iterdir()):
            if child.name.startswith(".") or child.name in _SKIPPED_DIRS:
                continue
            entries.append(self.show(child) + ("/" if child.is_dir() else ""))
            if child.is_dir() and not child.is_symlink():
                entries += [
                    self.show(c) + ("/" if c.is_dir() else "")
                    for c in sorted(child.iterdir())
                    if not c.name.startswith(".") and c.name not in _SKIPPED_DIRS
                ]
        listing = "\n".join(entries) or "(empty)"
        header = f"Here are the files and directories up to 2 levels deep in {self.show(path)}, excluding hidden items:"
        return f"{header}\n{listing}"

    def _create(self, path: Path, text: str) -> str:
        if path.is_dir():
            raise ToolError(f"{self.show(path)} is a directory; give a file path")
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
        return f"File {'overwritten' if existed else 'created'}: {self.show(path)}"

    def _str_replace(self, path: Path, old: str, new: str) -> str:
        text = _read(path, self.show(path))
        count = text.count(old)
        if count == 0:
            raise ToolError(
                f"No match found for old_str in {self.show(path)}; it must match exactly, whitespace and "
                "indentation included (view the file first)"
            )
        if count > 1:
            raise ToolError(f"Found {count} matches of old_str in {self.show(path)}; give more context so it is unique")
        at = text.index(old)
        path.write_bytes(text.replace(old, new, 1).encode())
        first = text[:at].count("\n") + 1
        return f"The file {self.show(path)} has been edited.\n" + _snippet(path, first, first + new.count("\n"))

    def _insert(self, path: Path, line: object, text: object) -> str:
        if not isinstance(text, str):
            raise ToolError("insert needs insert_text (the text to insert)")
        original = _read(path, self.show(path))
        lines = _lines(original)
        if not isinstance(line, int) or isinstance(line, bool) or not 0 <= line <= len(lines):
            raise ToolError(f"insert_line must be a line number from 0 (top) to {len(lines)} (end of the file)")
        added = _lines(text) or [""]
        end = "\n" if original.endswith("\n") or not original else ""
        path.write_bytes(("\n".join([*lines[:line], *added, *lines[line:]]) + end).encode())
        return f"The file {self.show(path)} has been edited.\n" + _snippet(path, line + 1, line + len(added))


def _text(params: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = params.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ToolError(f"`{key}` is required and must be a string")
    return value


def _read(path: Path, shown: str) -> str:
    if not path.exists():
        raise ToolError(f"{shown} does not exist; check the path, or use create to make a new file")
    if path.is_dir():
        raise ToolError(f"{shown} is a directory; use view to list it")
    data = path.read_bytes()
    if b"\0" in data:
        raise ToolError(f"{shown} is a binary file; the editor handles text files only")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ToolError(f"{shown} is not UTF-8 text; the editor handles UTF-8 files only") from None


def _lines(text: str) -> list[str]:
    """Lines as `cat -n` numbers them: a final newline does not start another line."""
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _view_range(view_range: object, count: int, shown: str) -> tuple[int, int]:
    if view_range is None:
        return 1, count
    if (
        not isinstance(view_range, list)
        or len(view_range) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in view_range)
    ):
        raise ToolError("view_range must be [start, end] with 1-based line numbers; end -1 means the end")
    start, end = view_range
    end = count if end == -1 else min(end, count)
    if not 1 <= start <= count or end < start:
        raise ToolError(f"view_range {view_range} is invalid: {shown} has {count} lines; start must be 1..{count}")
    return start, end


def _snippet(path: Path, first: int, last: int, context: int = 4) -> str:
    lines = path.read_text(errors="replace").split("\n")
    start = max(first - context, 1)
    shown = lines[start - 1 : last + context]
    return "\n".join(f"{n:6}\t{line}" for n, line in enumerate(shown, start))
