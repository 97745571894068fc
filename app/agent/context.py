"""Keeping the conversation cheap and inside the model's window.

Caching: the system prompt's last block carries a breakpoint (tools and system share that prefix);
`with_cache_breakpoints` adds moving breakpoints on the last block of the latest user messages, so
each request reads everything up to the previous turn from the prompt cache.

Window: `ContextWindow` estimates the next request's size from the last response's usage (input +
cache write + cache read is the prompt that was sent) plus what was added since. Past `compact_at`
of the window, old tool results are cleared in one big step (clearing changes the prefix, so the
cache is written again once), and when clearing cannot bring the request under `clear_to` the
conversation is compacted into a summary (the agent loop asks the model for it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.core.domain import JSON

CLEARED = "[output cleared to save context; the full text is in the run's event log]"
DEFAULT_WINDOW_TOKENS = 200_000
# Longest prefix wins; an unknown model gets DEFAULT_WINDOW_TOKENS.
WINDOW_TOKENS = {"claude": 200_000, "claude-3": 200_000, "claude-2.1": 200_000, "claude-2.0": 100_000}
MAX_BREAKPOINTS = 4
MOVING_BREAKPOINTS = 2
EPHEMERAL: JSON = {"type": "ephemeral"}
SUMMARY_REQUEST = (
    "[Note from the runner: the conversation is about to outgrow the model's context window and will be "
    "replaced by your summary.] Do not call any tool now. Write a summary from which you can continue the "
    "task without the conversation: what the task is, what you have done and found (files changed, commands "
    "whose results matter, errors seen), the state of the working tree, and exactly what remains to do."
)
SUMMARY_INTRO = "[Note from the runner: the conversation so far was compacted. Your summary of it follows.]"
CONTINUE_AFTER_SUMMARY = "Continue the task from where the summary leaves off. The working tree is as you left it."


def context_window(model: str, overrides: Mapping[str, int] | None = None) -> int:
    """The context window of `model` in tokens, by longest prefix match; `overrides` win."""
    table = {**WINDOW_TOKENS, **(overrides or {})}
    matches = [prefix for prefix in table if model.startswith(prefix)]
    return table[max(matches, key=len)] if matches else DEFAULT_WINDOW_TOKENS


def approx_tokens(value: Any) -> int:
    """About four characters of JSON per token: enough to decide when to shrink, never billed."""
    size = len(value) if isinstance(value, str) else len(json.dumps(value, ensure_ascii=False))
    return (size + 3) // 4


def prompt_tokens(usage: Mapping[str, int]) -> int:
    """The size of the prompt a response answered: uncached input + cache writes + cache reads."""
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return sum(int(usage.get(key) or 0) for key in keys)


def count_breakpoints(blocks: Iterable[Any]) -> int:
    return sum(1 for b in blocks if isinstance(b, dict) and b.get("cache_control"))


def with_cache_breakpoints(messages: list[JSON], moving: int = MOVING_BREAKPOINTS) -> list[JSON]:
    """A request copy of `messages`: a breakpoint on the last block of each of the latest `moving` user
    messages and none anywhere else. `messages` itself is not changed; untouched messages are shared.

    Two moving breakpoints let a request read the previous turn's entry exactly, even when a turn
    added more blocks than the API's 20-block lookback from one breakpoint.
    """
    marked: set[int] = set()
    for i in range(len(messages) - 1, -1, -1):
        if len(marked) >= moving:
            break
        if messages[i].get("role") == "user" and messages[i].get("content"):
            marked.add(i)
    out: list[JSON] = []
    for i, message in enumerate(messages):
        content: Any = message.get("content")
        if i in marked:
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            blocks = [_unmarked(b) for b in blocks[:-1]] + [{**blocks[-1], "cache_control": EPHEMERAL}]
            out.append({**message, "content": blocks})
        elif isinstance(content, list) and count_breakpoints(content):
            out.append({**message, "content": [_unmarked(b) for b in content]})
        else:
            out.append(message)
    return out


def _unmarked(block: Any) -> Any:
    if isinstance(block, dict) and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


@dataclass
class Cleared:
    """What clearing old tool results did: which calls lost their output, and about how many tokens it freed."""

    tool_use_ids: list[str] = field(default_factory=list)
    tokens: int = 0
    tokens_before_mark: int = 0


def clear_tool_results(messages: list[JSON], keep: int, mark: int | None = None, *, apply: bool = True) -> Cleared:
    """Replace the content of every tool_result but the latest `keep` with `CLEARED` (in place when `apply`).

    `tokens_before_mark` counts what was freed in messages before index `mark` (those the last
    response's usage already measured).
    """
    positions = [
        (i, k)
        for i, message in enumerate(messages)
        if message.get("role") == "user" and isinstance(message.get("content"), list)
        for k, block in enumerate(message["content"])
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    done = Cleared()
    placeholder = approx_tokens(CLEARED)
    for i, k in positions[: max(0, len(positions) - keep)]:
        block = messages[i]["content"][k]
        if block.get("content") == CLEARED:
            continue
        freed = max(0, approx_tokens(block.get("content", "")) - placeholder)
        done.tool_use_ids.append(str(block.get("tool_use_id", "")))
        done.tokens += freed
        if mark is None or i < mark:
            done.tokens_before_mark += freed
        if apply:
            content = list(messages[i]["content"])
            content[k] = {**block, "content": CLEARED}
            messages[i] = {**messages[i], "content": content}
    return done


def summary_request(messages: list[JSON], *, clear: bool) -> list[JSON]:
    """The conversation followed by the request for a summary (a copy; with `clear`, tool outputs cleared).

    A trailing assistant turn loses its tool_use blocks (they were cut off and will not be answered).
    Without `clear`, the copy keeps the conversation's prefix, so the request reads it from the cache.
    """
    out = list(messages)
    if clear:
        clear_tool_results(out, keep=0)
    if out and out[-1].get("role") == "assistant":
        kept = [b for b in out[-1].get("content") or [] if b.get("type") != "tool_use"]
        out[-1:] = [{"role": "assistant", "content": kept}] if kept else []
    ask: JSON = {"type": "text", "text": SUMMARY_REQUEST}
    if out and out[-1].get("role") == "user":
        content = out[-1]["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
        out[-1] = {"role": "user", "content": [*blocks, ask]}
    else:
        out.append({"role": "user", "content": [ask]})
    return out


def compacted(task: list[JSON], summary: str) -> list[JSON]:
    """The conversation that replaces a compacted one: the original task, the summary, and "continue"."""
    blocks: list[JSON] = [_unmarked(b) for b in task]
    blocks.append({"type": "text", "text": f"{SUMMARY_INTRO}\n\n{summary.strip()}"})
    blocks.append({"type": "text", "text": CONTINUE_AFTER_SUMMARY})
    return [{"role": "user", "content": blocks}]


@dataclass
class ContextWindow:
    """Tracks the prompt's size against the model's window and says when to shrink it.

    `observe` is told each response's usage and how many messages its request held; `estimate`
    adds what came after. The decision (`needs_shrinking`, `clearing_is_enough`) is pure.
    """

    window_tokens: int
    compact_at: float = 0.8
    clear_to: float = 0.6
    keep_tool_results: int = 3
    prompt_tokens: int = 0
    mark: int = 0

    def start(self, fixed_tokens: int) -> None:
        """Begin a conversation whose system prompt and tools take about `fixed_tokens`."""
        self.prompt_tokens, self.mark = fixed_tokens, 0

    def observe(self, usage: Mapping[str, int], sent_messages: int) -> None:
        measured = prompt_tokens(usage)
        if measured:
            self.prompt_tokens, self.mark = measured, sent_messages

    def estimate(self, messages: list[JSON]) -> int:
        """About how many tokens a request with `messages` holds."""
        return self.prompt_tokens + sum(approx_tokens(m.get("content", "")) for m in messages[self.mark :])

    def needs_shrinking(self, messages: list[JSON]) -> bool:
        return self.estimate(messages) > self.compact_at * self.window_tokens

    def clear(self, messages: list[JSON], *, apply: bool) -> tuple[Cleared, int]:
        """Clear old tool results (or, without `apply`, only measure it); returns them and the estimate after."""
        before = self.estimate(messages)
        done = clear_tool_results(messages, self.keep_tool_results, self.mark, apply=apply)
        if apply:
            self.prompt_tokens -= done.tokens_before_mark
        return done, before - done.tokens

    def clearing_is_enough(self, after: int) -> bool:
        return after <= self.clear_to * self.window_tokens


def cache_read_share(usages: Iterable[Mapping[str, int]]) -> float:
    """The share of prompt tokens read from the cache over `usages` (0.0 when there were none)."""
    usages = list(usages)
    total = sum(prompt_tokens(u) for u in usages)
    return sum(int(u.get("cache_read_input_tokens") or 0) for u in usages) / total if total else 0.0
