"""The bash tool (bash_20250124): one persistent shell in the sandbox, restartable by the model."""

from __future__ import annotations

from typing import Any

from app.core.domain import JSON
from app.core.errors import ToolError
from app.core.ports import Hands

BASH = "bash"
DEFINITION: JSON = {"type": "bash_20250124", "name": BASH}


async def run_bash(hands: Hands, params: dict[str, Any], timeout_s: float) -> tuple[str, int | None, bool]:
    """Answer one call: (the text for the model, the exit code, whether it is an error — a timeout)."""
    if params.get("restart") is True:
        await hands.restart()
        return "The shell was restarted; the working directory and variables are reset.", None, False
    command = params.get("command")
    if not isinstance(command, str) or not command.strip():
        raise ToolError('bash needs {"command": "<shell command>"} or {"restart": true}')
    result = await hands.run(command, timeout_s)
    text = result.output or "(no output)"
    if result.exit_code not in (0, None):
        text = f"{text.rstrip(chr(10))}\nexit code {result.exit_code}"
    return text, result.exit_code, result.timed_out
