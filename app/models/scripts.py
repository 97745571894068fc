"""Scripted model sessions: what the Anthropic test server and `ScriptedModel` play back.

A `Script` is a list of `Turn`s, one per assistant response. Which turn answers a request is
derived from the request alone: the number of assistant messages already in `messages` (a
trailing assistant prefill is not counted). Many sessions can share a script, and a resumed
conversation continues where it stopped.

Script files (YAML or JSON) hold one script, a list of scripts, or `{scripts: [...]}`:

    match: "fix the bug"          # optional; substring of the system prompt or first user message
    loop_last: false              # optional; keep answering with the last turn forever
    turns:
      - "Only text."                              # a text turn
      - [{text: "Looking."}, {bash: "ls -la"}]    # a list of blocks
      - content: [{edit: {command: view, path: README.md}}]
        faults: [529, 529]                        # HTTP errors answered first, each once per position
        delay_ms: 20
        stop_reason: tool_use                     # default: tool_use if a tool_use block, else end_turn

Block shorthands: `{text: s}`, `{bash: cmd}`, `{tool_use: {name, input}}`, `{edit: {command, path, ...}}`,
`{memory: {command, path, ...}}`, or a full block with `type`. A use of a tool Anthropic runs is two
blocks, `server_tool_use` and its result: `{web_search: {query, results: [{url, title}]}}` or
`{web_fetch: {url, text}}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.core.domain import JSON
from app.core.errors import ConfigError

EDIT_TOOL = "str_replace_based_edit_tool"
MEMORY_TOOL = "memory"


def text(s: str) -> JSON:
    """A text content block."""
    return {"type": "text", "text": s}


def tool_use(name: str, input: JSON) -> JSON:
    """A tool_use block; its id is assigned when the turn is played (unless `id` is set)."""
    return {"type": "tool_use", "name": name, "input": input}


def bash(cmd: str) -> JSON:
    """A call of the `bash` tool running `cmd`."""
    return tool_use("bash", {"command": cmd})


def bash_restart() -> JSON:
    """A call of the `bash` tool restarting the shell."""
    return tool_use("bash", {"restart": True})


def edit_view(path: str) -> JSON:
    """A `view` command of the text editor tool (text_editor_20250728)."""
    return tool_use(EDIT_TOOL, {"command": "view", "path": path})


def edit_create(path: str, text: str) -> JSON:
    """A `create` command of the text editor tool."""
    return tool_use(EDIT_TOOL, {"command": "create", "path": path, "file_text": text})


def edit_str_replace(path: str, old: str, new: str) -> JSON:
    """A `str_replace` command of the text editor tool."""
    return tool_use(EDIT_TOOL, {"command": "str_replace", "path": path, "old_str": old, "new_str": new})


def edit_insert(path: str, line: int, text: str) -> JSON:
    """An `insert` command of the text editor tool: `text` goes after line `line` (0 = top)."""
    return tool_use(EDIT_TOOL, {"command": "insert", "path": path, "insert_line": line, "insert_text": text})


def memory(command: str, **params: Any) -> JSON:
    """A call of the memory tool (memory_20250818), e.g. `memory("view", path="/memories")`."""
    return tool_use(MEMORY_TOOL, {"command": command, **params})


def web_search(query: str, results: list[tuple[str, str]] | None = None, *, id: str | None = None) -> list[JSON]:
    """A web search Anthropic ran within the turn: `server_tool_use` + `web_search_tool_result` (url, title) pairs."""
    found = [
        {"type": "web_search_result", "url": url, "title": title, "encrypted_content": "Eqg", "page_age": None}
        for url, title in results or []
    ]
    return _server_use("web_search", {"query": query}, "web_search_tool_result", found, id)


def web_fetch(url: str, text: str, *, id: str | None = None) -> list[JSON]:
    """A page Anthropic fetched within the turn: `server_tool_use` + `web_fetch_tool_result` with its text."""
    document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}
    fetched = {"type": "web_fetch_result", "url": url, "content": document, "retrieved_at": "2025-01-01T00:00:00Z"}
    return _server_use("web_fetch", {"url": url}, "web_fetch_tool_result", fetched, id)


def _server_use(name: str, input: JSON, result_type: str, content: Any, id: str | None) -> list[JSON]:
    use: JSON = {"type": "server_tool_use", "name": name, "input": input}
    result: JSON = {"type": result_type, "content": content}
    if id is not None:
        use["id"] = result["tool_use_id"] = id
    return [use, result]


@dataclass
class Turn:
    """One scripted assistant response.

    `faults` are HTTP statuses answered before the turn, each once per conversation position (a
    looping last turn faults again at each new position; sessions at the same position share them).
    """

    content: list[JSON]
    stop_reason: str | None = None
    faults: list[int] = field(default_factory=list)
    delay_ms: int = 0

    @property
    def final_stop_reason(self) -> str:
        """`stop_reason` if given, else tool_use when a tool_use block is present, else end_turn."""
        if self.stop_reason:
            return self.stop_reason
        return "tool_use" if any(b.get("type") == "tool_use" for b in self.content) else "end_turn"


@dataclass
class Script:
    """A scripted session. `match` None makes it a default script."""

    turns: list[Turn]
    match: str | None = None
    loop_last: bool = False
    name: str = ""

    def turn_at(self, index: int) -> Turn | None:
        """The turn answering a request with `index` assistant messages; None when the script is over."""
        if index < len(self.turns):
            return self.turns[index]
        if self.loop_last and self.turns:
            return self.turns[-1]
        return None

    def matches(self, haystack: str) -> bool:
        return self.match is not None and self.match in haystack

    def describe(self) -> str:
        return self.name or (f"match={self.match!r}" if self.match is not None else "default")


def turn_index(messages: list[JSON]) -> int:
    """How many assistant turns the conversation holds (a trailing prefill does not count)."""
    count = sum(1 for m in messages if m.get("role") == "assistant")
    if messages and messages[-1].get("role") == "assistant":
        count -= 1
    return count


def block_text(content: Any) -> str:
    """The text of a message's or system prompt's content (string or list of blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


def select_script(scripts: list[Script], system: Any, messages: list[JSON]) -> Script | None:
    """The first script whose `match` is in the system prompt or first user message, else the first default."""
    first_user = block_text(messages[0].get("content")) if messages else ""
    haystack = block_text(system) + "\n" + first_user
    for script in scripts:
        if script.matches(haystack):
            return script
    return next((s for s in scripts if s.match is None), None)


def estimate_tokens(value: Any) -> int:
    """About four characters per token of the value's JSON (strings count by their own length)."""
    size = len(value) if isinstance(value, str) else len(json.dumps(value, sort_keys=True, ensure_ascii=False))
    return max(1, (size + 3) // 4)


def play(turn: Turn, next_id: Any) -> list[JSON]:
    """The turn's content with ids assigned to tool_use and server_tool_use blocks (`next_id()` makes one).

    A server tool result without `tool_use_id` answers the server_tool_use block before it.
    """
    content: list[JSON] = []
    server_id = ""
    for block in turn.content:
        block = json.loads(json.dumps(block))
        kind = str(block.get("type"))
        if kind == "tool_use" and not block.get("id"):
            block = {"type": "tool_use", "id": str(next_id()), "name": block["name"], "input": block["input"]}
        elif kind == "server_tool_use":
            server_id = block["id"] = block.get("id") or f"srv{next_id()}"
        elif kind.endswith("_tool_result") and kind != "tool_result" and not block.get("tool_use_id"):
            block = {"type": kind, "tool_use_id": server_id, **block}
        content.append(block)
    return content


def check_messages(messages: Any) -> str | None:
    """What the Messages API would refuse in `messages` (its 400 message), or None if they are valid."""
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous_ids: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        if not isinstance(content, str | list):
            return f"messages.{i}.content: Field required"
        last_assistant = i == len(messages) - 1 and role == "assistant"
        if not content and not last_assistant:
            return (
                f"messages.{i}: all messages must have non-empty content "
                "except for the optional final assistant message"
            )
        if i == 0 and role != "user":
            return 'messages.0.role: the first message must use the "user" role'
        if i > 0 and role == messages[i - 1].get("role"):
            return (
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
        problem = _check_tool_results(i, blocks, previous_ids) if role == "user" else None
        if problem:
            return problem
        previous_ids = (
            {str(b.get("id")) for b in blocks if b.get("type") == "tool_use"} if role == "assistant" else set()
        )
    return None


def _check_tool_results(i: int, blocks: list[JSON], expected: set[str]) -> str | None:
    answered = {str(b.get("tool_use_id")) for b in blocks if b.get("type") == "tool_result"}
    for k, block in enumerate(blocks):
        if block.get("type") == "tool_result" and str(block.get("tool_use_id")) not in expected:
            return (
                f"messages.{i}.content.{k}: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding `tool_use` block "
                "in the previous message."
            )
    missing = sorted(expected - answered)
    if missing:
        return (
            f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
            f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block "
            "in the next message."
        )
    return None


def load_scripts(path: str | Path) -> list[Script]:
    """Every script in a YAML or JSON file (format in the module docstring). Raises ConfigError."""
    path = Path(path)
    try:
        raw = path.read_text()
        data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the script file ({exc}); give a YAML or JSON file") from None
    if isinstance(data, dict) and "scripts" in data:
        data = data["scripts"]
    items = data if isinstance(data, list) else [data]
    return [_script(item, f"{path}: script {i}") for i, item in enumerate(items)]


def load_script(path: str | Path) -> Script:
    """The one script in a YAML or JSON file. Raises ConfigError if it holds none or several."""
    scripts = load_scripts(path)
    if len(scripts) != 1:
        raise ConfigError(f"{path}: holds {len(scripts)} scripts; use load_scripts() or keep one per file")
    return scripts[0]


def _script(item: Any, where: str) -> Script:
    if not isinstance(item, dict) or not isinstance(item.get("turns"), list):
        raise ConfigError(f"{where}: a script is a mapping with a list `turns`")
    unknown = set(item) - {"match", "turns", "loop_last", "name"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; use match, turns, loop_last, name")
    turns = [_turn(t, f"{where}: turns[{i}]") for i, t in enumerate(item["turns"])]
    match = item.get("match")
    return Script(turns, None if match is None else str(match), bool(item.get("loop_last")), str(item.get("name", "")))


def _turn(item: Any, where: str) -> Turn:
    if isinstance(item, str):
        return Turn([text(item)])
    if isinstance(item, list):
        return Turn([block for b in item for block in _blocks(b, where)])
    if not isinstance(item, dict) or not isinstance(item.get("content"), list):
        raise ConfigError(f"{where}: a turn is a string, a list of blocks, or a mapping with a list `content`")
    faults = item.get("faults") or []
    if not all(isinstance(f, int) and 400 <= f <= 599 for f in faults):
        raise ConfigError(f"{where}: faults must be HTTP error statuses such as [529, 429]")
    content = [block for b in item["content"] for block in _blocks(b, where)]
    return Turn(content, item.get("stop_reason"), list(faults), int(item.get("delay_ms", 0)))


def _blocks(item: Any, where: str) -> list[JSON]:
    """One shorthand as blocks: most are one block, a server tool use is two."""
    if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), dict):
        ((key, value),) = item.items()
        if key == "web_search":
            pairs = [(str(r.get("url", "")), str(r.get("title", ""))) for r in value.get("results") or []]
            return web_search(str(value.get("query", "")), pairs)
        if key == "web_fetch":
            return web_fetch(str(value.get("url", "")), str(value.get("text", "")))
    return [_block(item, where)]


def _block(item: Any, where: str) -> JSON:
    if isinstance(item, str):
        return text(item)
    if isinstance(item, dict) and "type" in item:
        return dict(item)
    if isinstance(item, dict) and len(item) == 1:
        ((key, value),) = item.items()
        if key == "text":
            return text(str(value))
        if key == "bash":
            return bash(str(value))
        if key == "tool_use" and isinstance(value, dict):
            return tool_use(str(value["name"]), dict(value.get("input") or {}))
        if key == "edit" and isinstance(value, dict):
            return tool_use(EDIT_TOOL, dict(value))
        if key == "memory" and isinstance(value, dict):
            return tool_use(MEMORY_TOOL, dict(value))
    raise ConfigError(
        f"{where}: block {item!r} is not understood; use text, bash, tool_use, edit, memory, web_search, web_fetch, "
        "or a block with type"
    )
