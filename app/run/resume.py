"""Rebuilding an interrupted run's conversation from its event log, without repeating anything.

Every `model.turn` becomes the assistant message it was (a paused turn's continuation joins it);
the tool calls of a turn get the results recorded in `tool.result` events — a call without one (the
worker died while it ran) gets an error result saying so; `run.message.delivered` notes,
`context.cleared` and `context.compacted` are replayed where they happened. Usage and cost are
summed as the loop summed them. The last `workspace.checkpoint` says where the workspace stands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.agent import context as ctx
from app.agent.loop import CONTINUE, CUT_TOOL_CALL, USAGE_KEYS, AgentOutcome
from app.agent.tools.bash import BASH
from app.core.domain import JSON, Event

INTERRUPTED = "the machine restarted while this command ran; it did not finish — check the state and rerun it if needed"
NO_CALLS = "Continue, or finish with your summary."


@dataclass
class Rebuilt:
    """An interrupted run as the log left it: the outcome so far (its `messages` end with a user turn,
    unless `finished`), the last checkpoint, and how many times the run was resumed before."""

    outcome: AgentOutcome
    finished: bool = False
    last_stop: str | None = None
    checkpoint: JSON | None = None
    resumes: int = 0
    calls: list[JSON] = field(default_factory=list)
    results: dict[str, JSON] = field(default_factory=dict)
    interrupted: list[JSON] = field(default_factory=list)
    """Tool calls that have no recorded result: the worker died while they ran."""


def restart_note(turn: int, checkpoint_turn: int | None) -> JSON:
    where = f"the end of turn {checkpoint_turn}" if checkpoint_turn else "the base commit (no file had changed)"
    return {
        "type": "text",
        "text": (
            "[Note from the runner: The machine running you restarted: running processes and shell state "
            f"are gone; the workspace is restored to {where}. Go on with the task from turn {turn + 1}.]"
        ),
    }


def rebuild(events: list[Event], first: list[JSON], price: Callable[[dict[str, int]], float]) -> Rebuilt:
    """The conversation and outcome of a run from its events; `first` is the task (the first user message)."""
    state = Rebuilt(AgentOutcome(messages=[{"role": "user", "content": first}]))
    for event in events:
        data = event.data
        if event.type == "tool.call":
            if event.data.get("name") == BASH and isinstance(cmd := (data.get("input") or {}).get("command"), str):
                state.outcome.commands.append(cmd)
        elif event.type == "tool.result":
            state.results[str(data.get("id"))] = data
        elif event.type == "model.turn":
            _flush(state)
            _turn(state, data, price)
        elif event.type == "run.message.delivered":
            _flush(state)
            _add_user(
                state.outcome, [_note(f"A message from the people running this routine arrived:\n{data['text']}")]
            )
        elif event.type == "context.cleared":
            _flush(state)
            _clear(state.outcome.messages, {str(i) for i in data.get("tool_use_ids") or []})
        elif event.type == "context.compacted":
            _flush(state)
            state.outcome.messages = list(data.get("messages") or [])
            _add_usage(state.outcome, data.get("usage") or {})
            state.outcome.cost_usd += float(data.get("cost_usd") or 0.0)
        elif event.type == "workspace.checkpoint":
            state.checkpoint = data
        elif event.type == "run.resumed":
            state.resumes += 1
    _flush(state)
    return state


def _turn(state: Rebuilt, data: JSON, price: Callable[[dict[str, int]], float]) -> None:
    outcome, content = state.outcome, list(data.get("content") or [])
    outcome.turns = max(outcome.turns, int(data.get("turn") or 0))
    turn_usage = _add_usage(outcome, data.get("usage") or {})
    outcome.cost_usd += price(turn_usage)
    messages = outcome.messages
    if content and messages[-1]["role"] == "assistant":
        messages[-1] = {"role": "assistant", "content": [*messages[-1]["content"], *content]}
    elif content:
        messages.append({"role": "assistant", "content": content})
    state.last_stop = str(data.get("stop_reason"))
    state.finished = state.last_stop in ("end_turn", "stop_sequence")
    if state.finished:
        outcome.summary = "\n\n".join(str(b.get("text", "")) for b in content if b.get("type") == "text").strip()
    if state.last_stop in ("tool_use", "max_tokens"):
        state.calls = [b for b in content if b.get("type") == "tool_use"] or [{"stop_reason": state.last_stop}]


def _flush(state: Rebuilt) -> None:
    """Answer the last turn's tool calls with their recorded results (or the interruption error)."""
    calls, state.calls = state.calls, []
    if not calls:
        return
    if "stop_reason" in calls[0]:
        _add_user(state.outcome, [_note(NO_CALLS if calls[0]["stop_reason"] == "tool_use" else CONTINUE)])
        return
    blocks: list[JSON] = []
    for call in calls:
        call_id = str(call.get("id", ""))
        recorded = state.results.get(call_id)
        if recorded is None:
            content, is_error = INTERRUPTED, True
            state.interrupted.append(call)
        else:
            content, is_error = str(recorded.get("sent", recorded.get("output", ""))), bool(recorded.get("is_error"))
            if content == CUT_TOOL_CALL:
                is_error = True
        blocks.append({"type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error})
    _add_user(state.outcome, blocks)


def _clear(messages: list[JSON], ids: set[str]) -> None:
    for i, message in enumerate(messages):
        if message["role"] != "user" or not isinstance(message["content"], list):
            continue
        content = [
            {**b, "content": ctx.CLEARED} if b.get("type") == "tool_result" and b.get("tool_use_id") in ids else b
            for b in message["content"]
        ]
        messages[i] = {**message, "content": content}


def _add_usage(outcome: AgentOutcome, usage: JSON) -> dict[str, int]:
    turn = {key: int(usage.get(key) or 0) for key in USAGE_KEYS}
    for key, value in turn.items():
        outcome.usage[key] += value
    return turn


def _add_user(outcome: AgentOutcome, blocks: list[JSON]) -> None:
    messages = outcome.messages
    if messages and messages[-1]["role"] == "user":
        messages[-1] = {"role": "user", "content": [*messages[-1]["content"], *blocks]}
    else:
        messages.append({"role": "user", "content": blocks})


def _note(text: str) -> JSON:
    return {"type": "text", "text": text}
