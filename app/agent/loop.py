"""The agent loop: run → step → query the model → execute tools → record events.

A run ends when the model finishes (end_turn), stops (refusal, context window), or hits a limit
(turns, minutes, cost). Completion and stops are exceptions caught in `run`, which always returns
an `AgentOutcome`; only a `ModelError` (or a broken sandbox) escapes, for the runner to handle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.agent.tools import BASH, Toolbox
from app.domain import JSON
from app.errors import RunLimitReached, RunStopped
from app.ports import EventSink, ModelClient, ModelResponse

USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
CONTINUE = "Your reply was cut off by the output token limit. Continue exactly where you stopped."
CUT_TOOL_CALL = (
    "Not run: your reply hit the output token limit, so this call may be incomplete. Send it again, smaller."
)


@dataclass
class AgentOutcome:
    """How a run of the loop ended. `messages` is the whole conversation, for resuming later."""

    summary: str = ""
    turns: int = 0
    usage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(USAGE_KEYS, 0))
    cost_usd: float = 0.0
    commands: list[str] = field(default_factory=list)
    limit: str | None = None
    error: str | None = None
    messages: list[JSON] = field(default_factory=list)


class _Completed(Exception):
    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


class Agent:
    """Drives one conversation between a model and a toolbox, recording every step as an event."""

    def __init__(
        self,
        model: ModelClient,
        toolbox: Toolbox,
        events: EventSink,
        *,
        model_name: str,
        max_tokens: int = 8192,
        max_turns: int,
        max_minutes: float,
        max_cost_usd: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        price: Callable[[str, dict[str, int]], float] | None = None,
    ) -> None:
        self.model = model
        self.toolbox = toolbox
        self.events = events
        self.model_name = model_name
        self.max_tokens = max_tokens
        self.max_turns = max_turns
        self.max_minutes = max_minutes
        self.max_cost_usd = max_cost_usd
        self.clock = clock
        self.price = price
        self.system: list[JSON] = []
        self.outcome = AgentOutcome()
        self._started = 0.0
        self._warned = False
        self._last_text = ""

    async def run(self, system: list[JSON], first_user_message: str | list[JSON]) -> AgentOutcome:
        """Run the conversation to its end; the outcome says whether it finished, stopped or hit a limit."""
        first = [_note(first_user_message)] if isinstance(first_user_message, str) else first_user_message
        self.system = system
        self.outcome = AgentOutcome(messages=[{"role": "user", "content": first}])
        self._started, self._warned, self._last_text = self.clock(), False, ""
        try:
            while True:
                await self.step()
        except _Completed as done:
            self.outcome.summary = done.summary
        except RunLimitReached as exc:
            self.outcome.limit, self.outcome.error, self.outcome.summary = exc.limit, str(exc), self._last_text
        except RunStopped as exc:
            self.outcome.error = str(exc)
        return self.outcome

    async def step(self) -> None:
        """One turn: check the limits, query the model, act on its stop_reason."""
        self.check_limits()
        response = await self.query()
        await self.handle(response)

    def check_limits(self) -> None:
        if self.outcome.turns >= self.max_turns:
            raise RunLimitReached(
                "max_turns",
                f"the run used all {self.max_turns} turns before the model finished; "
                "raise limits.max_turns in the routine or give it a narrower task",
            )
        if self._minutes() >= self.max_minutes:
            raise RunLimitReached(
                "max_minutes",
                f"the run reached its limit of {self.max_minutes:g} minutes before the model finished; "
                "raise limits.max_minutes in the routine or give it a narrower task",
            )
        if self.max_cost_usd is not None and self.outcome.cost_usd >= self.max_cost_usd:
            raise RunLimitReached(
                "max_cost_usd",
                f"the run spent ${self.outcome.cost_usd:.2f}, reaching its limit of ${self.max_cost_usd:g}; "
                "raise limits.max_cost_usd in the routine or give it a narrower task",
            )

    async def query(self) -> ModelResponse:
        turn = self.outcome.turns + 1
        await self.events.emit("model.request", {"turn": turn})
        response = await self.model.create(
            model=self.model_name,
            system=self.system,
            messages=list(self.outcome.messages),
            tools=self.toolbox.definitions(),
            max_tokens=self.max_tokens,
        )
        self.outcome.turns = turn
        self._account(response.usage)
        await self.events.emit(
            "model.turn",
            {
                "turn": turn,
                "content": response.content,
                "stop_reason": response.stop_reason,
                "usage": response.usage,
                "model": response.model,
                "id": response.id,
            },
        )
        return response

    async def handle(self, response: ModelResponse) -> None:
        """Act on the turn's stop_reason: finish, answer tool calls, continue, or stop."""
        content, reason = response.content, response.stop_reason
        text = _text(content)
        self._last_text = text or self._last_text
        if content:
            self.outcome.messages.append({"role": "assistant", "content": content})
        calls = [block for block in content if block.get("type") == "tool_use"]
        if reason in ("end_turn", "stop_sequence"):
            raise _Completed(self._last_text)
        if reason == "tool_use":
            self._add_user(await self.execute(calls) if calls else [_note("Continue, or finish with your summary.")])
        elif reason == "max_tokens":
            self._add_user(await self.refuse_cut_calls(calls) if calls else [_note(CONTINUE)])
        elif reason == "pause_turn":
            return
        elif reason == "refusal":
            raise RunStopped(f"the model refused: {text or 'it gave no reason'}")
        elif reason == "model_context_window_exceeded":
            raise RunStopped(
                "the conversation no longer fits the model's context window; "
                "give the routine a narrower task or use a model with a larger context window"
            )
        else:
            raise RunStopped(f"the model stopped with an unknown stop_reason {reason!r}")

    async def execute(self, calls: list[JSON]) -> list[JSON]:
        """Run every tool call of a turn in order; returns their tool_result blocks."""
        results: list[JSON] = []
        for call in calls:
            name, params = call.get("name"), call.get("input")
            await self.events.emit("tool.call", {"id": call.get("id"), "name": name, "input": params})
            if name == BASH and isinstance(params, dict) and isinstance(params.get("command"), str):
                self.outcome.commands.append(params["command"])
            out = await self.toolbox.execute(call)
            await self.events.emit(
                "tool.result",
                {
                    "id": call.get("id"),
                    "name": name,
                    "output": out.output,
                    "is_error": out.is_error,
                    "exit_code": out.exit_code,
                },
            )
            results.append(out.result)
        return results

    async def refuse_cut_calls(self, calls: list[JSON]) -> list[JSON]:
        """Answer the tool calls of a turn cut off at max_tokens with errors, without running them."""
        results: list[JSON] = []
        for call in calls:
            data = {"id": call.get("id"), "name": call.get("name"), "output": CUT_TOOL_CALL, "is_error": True}
            await self.events.emit("tool.result", {**data, "exit_code": None})
            results.append(
                {"type": "tool_result", "tool_use_id": call.get("id", ""), "content": CUT_TOOL_CALL, "is_error": True}
            )
        return results

    def _add_user(self, blocks: list[JSON]) -> None:
        note = self._wrap_up_note()
        if note is not None:
            blocks = [*blocks, note]
        messages = self.outcome.messages
        if messages and messages[-1]["role"] == "user":
            messages[-1] = {"role": "user", "content": [*messages[-1]["content"], *blocks]}
        else:
            messages.append({"role": "user", "content": blocks})

    def _wrap_up_note(self) -> JSON | None:
        """A note telling the model to finish, sent once when 2 turns remain or 80% of a budget is used."""
        turns_left = self.max_turns - self.outcome.turns
        minutes_left = self.max_minutes - self._minutes()
        near_cost = self.max_cost_usd is not None and self.outcome.cost_usd >= 0.8 * self.max_cost_usd
        if self._warned or (turns_left > 2 and minutes_left > 0.2 * self.max_minutes and not near_cost):
            return None
        self._warned = True
        return _note(
            f"[Note from the runner: the run is close to its limits ({turns_left} turns and about "
            f"{max(minutes_left, 0):.0f} minutes left). Wrap up now: leave the working tree in a consistent "
            "state and reply with your summary.]"
        )

    def _account(self, usage: dict[str, int]) -> None:
        turn = {key: int(usage.get(key) or 0) for key in USAGE_KEYS}
        for key, value in turn.items():
            self.outcome.usage[key] += value
        if self.price is not None:
            self.outcome.cost_usd += self.price(self.model_name, turn)

    def _minutes(self) -> float:
        return (self.clock() - self._started) / 60


def _text(content: list[JSON]) -> str:
    return "\n\n".join(str(b.get("text", "")) for b in content if b.get("type") == "text").strip()


def _note(text: str) -> JSON:
    return {"type": "text", "text": text}
