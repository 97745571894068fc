"""Server tools (web_search, web_fetch): Anthropic runs them, outside our egress proxy, so they are
offered only when the routine lists them; their uses in an assistant turn become events."""

from __future__ import annotations

from app.core.domain import JSON

# The routine's name → the versioned tool type the Messages API takes.
SERVER_TOOLS = {"web_search": "web_search_20250305", "web_fetch": "web_fetch_20250910"}


def server_definitions(enabled: set[str], max_uses: int) -> list[JSON]:
    """The `tools` entries of the enabled server tools, each usable `max_uses` times per request."""
    return [
        {"type": kind, "name": name, "max_uses": max_uses} for name, kind in SERVER_TOOLS.items() if name in enabled
    ]


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
