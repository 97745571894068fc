"""The editor tool (text_editor_20250728): declared here, run by app.hands.editor inside the sandbox."""

from __future__ import annotations

from app.core.domain import JSON

EDITOR = "str_replace_based_edit_tool"


def editor_definition(max_characters: int | None = None) -> JSON:
    """The editor's entry in a Messages request's `tools`."""
    tool: JSON = {"type": "text_editor_20250728", "name": EDITOR}
    if max_characters is not None:
        tool["max_characters"] = max_characters
    return tool
