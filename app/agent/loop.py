"""The agent loop: run → step → query the model → execute tools → record events.

A run ends when the model finishes (end_turn), stops (refusal), or hits a limit (turns, minutes,
cost). Completion and stops are exceptions caught in `run`, which always returns an `AgentOutcome`;
only a `ModelError` (or a broken sandbox) escapes, for the runner to handle. Before each request
the conversation is kept inside the model's window (see app.agent.context): old tool results are
cleared, or the conversation is compacted into a summary, and the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.agent import context as ctx
from app.agent.tools.bash import BASH
from app.agent.tools.server import server_tool_events
from app.agent.tools.toolbox import Toolbox
from app.core.domain import JSON
from app.core.errors import PromptTooLong, RunLimitReached, RunStopped
from app.core.ports import EventSink, ModelClient, ModelResponse

USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "web_search_requests",
)
CONTINUE = "Your reply was cut off by the output token limit. Continue exactly where you stopped."
_NO_ROOM = (
    "the conversation no longer fits the model's context window, even compacted; "
    "give the routine a narrower task or use a model with a larger context window"
)
CUT_TOOL_CALL = (
    "Not run: your reply hit the output token limit, so this call may be incomplete. Send it again, smaller."
)


@dataclass
class AgentOutcome:
    """How a run of the loop ended.

    `messages` is the conversation as last sent (compacted, if it was), for resuming later. `usage`
    sums all four token counts of every request, compaction summaries included; `cost_usd` is their price.
    """

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


@dataclass(frozen=True)
class Budget:
    """What one conversation may spend: the model and its output per turn, turns, minutes and dollars
    (priced by `price(model, usage)`; None prices nothing)."""

    model: str
    max_turns: int
    max_minutes: float
    max_cost_usd: float | None = None
    max_tokens: int = 8192
    price: Callable[[str, dict[str, int]], float] | None = None


@dataclass(frozen=True)
class Hooks:
    """How the run around a conversation takes part: `cancelled()` is asked before each turn, `inbox()`
    gives the people's messages for the next turn, `after_tools(turn)` runs after each turn's tools."""

    cancelled: Callable[[], Awaitable[bool]] | None = None
    inbox: Callable[[], Awaitable[list[str]]] | None = None
    after_tools: Callable[[int], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Window:
    """The context window kept (default: the model's) and how many recent tool results stay whole."""

    tokens: int | None = None
    keep_tool_results: int = 3


class Agent:
    """Drives one conversation between a model and a toolbox, recording every step as an event."""

    def __init__(
        self,
        model: ModelClient,
        toolbox: Toolbox,
        events: EventSink,
        budget: Budget,
        *,
        hooks: Hooks | None = None,
        window: Window | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.toolbox = toolbox
        self.events = events
        self.budget = budget
        self.hooks = hooks or Hooks()
        self.clock = clock
        window = window or Window()
        self.context = ctx.ContextWindow(
            window.tokens or ctx.context_window(budget.model), keep_tool_results=window.keep_tool_results
        )
        self.system: list[JSON] = []
        self.outcome = AgentOutcome()
        self._task: list[JSON] = []
        self._started = 0.0
        self._warned = False
        self._last_text = ""
        self._just_compacted = False

    async def run(self, system: list[JSON], first_user_message: str | list[JSON]) -> AgentOutcome:
        """Run the conversation to its end; the outcome says whether it finished, stopped or hit a limit."""
        first = [_note(first_user_message)] if isinstance(first_user_message, str) else first_user_message
        return await self.resume(system, [{"role": "user", "content": first}], AgentOutcome())

    async def resume(
        self,
        system: list[JSON],
        messages: list[JSON],
        outcome: AgentOutcome,
        *,
        task: list[JSON] | None = None,
        elapsed_s: float = 0.0,
    ) -> AgentOutcome:
        """Go on with a conversation (ending with a user turn) whose turns, usage and cost so far are in
        `outcome`; `task` (default: the first message) is what a compaction keeps, `elapsed_s` of
        `max_minutes` count as spent. `run` is `resume` from the first message."""
        self.system, self._task = system, list(task if task is not None else messages[0]["content"])
        self.outcome = outcome
        self.outcome.messages = messages
        self._started, self._warned, self._last_text = self.clock() - elapsed_s, False, ""
        self._just_compacted = False
        self.context.start(self._fixed_tokens())
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
        """One turn: check the limits, fit the context window, query the model, act on its stop_reason."""
        self.check_limits()
        if self.hooks.cancelled is not None and await self.hooks.cancelled():
            raise RunLimitReached("cancelled", f"the run was cancelled after {self.outcome.turns} turns")
        await self.read_inbox()
        await self.fit_context()
        try:
            response = await self.query()
        except PromptTooLong:  # our estimate of the window was short: compact as for the stop reason
            if self._just_compacted:
                raise RunStopped(_NO_ROOM) from None
            await self.compact("window_exceeded")
            return
        await self.handle(response)

    def check_limits(self) -> None:
        """Raise RunLimitReached naming the first budget used up (checked after every turn's tools ran)."""
        done = f"after {self.outcome.turns} turns ({_usd(self.outcome.cost_usd)} spent)"
        if self.outcome.turns >= self.budget.max_turns:
            raise RunLimitReached(
                "max_turns",
                f"max_turns ({self.budget.max_turns}) reached {done} before the model finished; "
                "raise limits.max_turns in the routine or give it a narrower task",
            )
        if self._minutes() >= self.budget.max_minutes:
            raise RunLimitReached(
                "max_minutes",
                f"max_minutes ({self.budget.max_minutes:g} minutes) reached {done} before the model finished; "
                "raise limits.max_minutes in the routine or give it a narrower task",
            )
        if self.budget.max_cost_usd is not None and self.outcome.cost_usd >= self.budget.max_cost_usd:
            raise RunLimitReached(
                "max_cost_usd",
                f"max_cost_usd (${self.budget.max_cost_usd:g}) reached {done} before the model finished; "
                "raise limits.max_cost_usd in the routine or give it a narrower task",
            )

    async def query(self) -> ModelResponse:
        turn = self.outcome.turns + 1
        await self.events.emit("model.request", {"turn": turn})
        response = await self._create(self.outcome.messages)
        self.outcome.turns = turn
        cost = self._account(response.usage)
        self.context.observe(response.usage, len(self.outcome.messages))
        await self.events.emit(
            "model.turn",
            {
                "turn": turn,
                "content": response.content,
                "stop_reason": response.stop_reason,
                "usage": response.usage,
                "cost_usd": cost,
                "model": response.model,
                "id": response.id,
            },
        )
        for kind, data in server_tool_events(response.content):
            await self.events.emit(kind, data)
        return response

    async def handle(self, response: ModelResponse) -> None:
        """Act on the turn's stop_reason: finish, answer tool calls, continue, or stop."""
        content, reason = response.content, response.stop_reason
        text = _text(content)
        self._last_text = text or self._last_text
        messages = self.outcome.messages
        if content and messages[-1]["role"] == "assistant":  # the continuation of a paused turn
            messages[-1] = {"role": "assistant", "content": [*messages[-1]["content"], *content]}
        elif content:
            messages.append({"role": "assistant", "content": content})
        calls = [block for block in content if block.get("type") == "tool_use"]
        if reason in ("end_turn", "stop_sequence"):
            raise _Completed(self._last_text)
        if reason == "tool_use":
            self._add_user(await self.execute(calls) if calls else [_note("Continue, or finish with your summary.")])
            if calls and self.hooks.after_tools is not None:
                await self.hooks.after_tools(self.outcome.turns)
        elif reason == "max_tokens":
            self._add_user(await self.refuse_cut_calls(calls) if calls else [_note(CONTINUE)])
        elif reason == "pause_turn":
            return
        elif reason == "refusal":
            raise RunStopped(f"the model refused: {text or 'it gave no reason'}")
        elif reason == "model_context_window_exceeded":
            if self._just_compacted:
                raise RunStopped(_NO_ROOM)
            await self.compact("window_exceeded")
            return
        else:
            raise RunStopped(f"the model stopped with an unknown stop_reason {reason!r}")
        self._just_compacted = False

    async def fit_context(self) -> None:
        """Before a request near the window: clear old tool results in one step, or compact if that is not enough."""
        messages = self.outcome.messages
        if not self.context.needs_shrinking(messages):
            return
        before = self.context.estimate(messages)
        planned, after = self.context.clear(messages, apply=False)
        if not planned.tool_use_ids or not self.context.clearing_is_enough(after):
            await self.compact("near_window")
            return
        cleared, after = self.context.clear(messages, apply=True)
        await self.events.emit(
            "context.cleared",
            {"tool_use_ids": cleared.tool_use_ids, "tokens_before": before, "tokens_after": after},
        )

    async def compact(self, reason: str) -> None:
        """Replace the conversation by [task, the model's summary of it, "continue"]; emits context.compacted.

        The summary request shares the conversation's cached prefix, except when the window was
        already exceeded: then every tool output is cleared first so that the request fits.
        """
        before = self.context.estimate(self.outcome.messages)
        request = ctx.summary_request(self.outcome.messages, clear=reason == "window_exceeded")
        try:
            response = await self._create(request)
        except PromptTooLong:
            raise RunStopped(_NO_ROOM) from None
        cost = self._account(response.usage)
        summary = _text(response.content)
        if not summary or response.stop_reason == "model_context_window_exceeded":
            raise RunStopped(_NO_ROOM)
        self.outcome.messages = ctx.compacted(self._task, summary)
        self.context.start(self._fixed_tokens())
        self._just_compacted = True
        await self.events.emit(
            "context.compacted",
            {
                "reason": reason,
                "turn": self.outcome.turns,
                "tokens_before": before,
                "tokens_after": self.context.estimate(self.outcome.messages),
                "summary": summary,
                "messages": self.outcome.messages,
                "usage": response.usage,
                "cost_usd": cost,
            },
        )
        self.check_limits()

    async def _create(self, messages: list[JSON]) -> ModelResponse:
        """One Messages request with the cache breakpoints placed (at most 4 in all)."""
        tools = self.toolbox.definitions()
        fixed = ctx.count_breakpoints(self.system) + ctx.count_breakpoints(tools)
        moving = max(0, min(ctx.MOVING_BREAKPOINTS, ctx.MAX_BREAKPOINTS - fixed))
        return await self.model.create(
            model=self.budget.model,
            system=self.system,
            messages=ctx.with_cache_breakpoints(messages, moving),
            tools=tools,
            max_tokens=self.budget.max_tokens,
        )

    async def execute(self, calls: list[JSON]) -> list[JSON]:
        """Run every tool call of a turn in order; returns their tool_result blocks."""
        results: list[JSON] = []
        for call in calls:
            name, params = call.get("name"), call.get("input")
            via = {"connector": c} if (c := self.toolbox.connector_of(str(name))) else {}
            await self.events.emit("tool.call", {"id": call.get("id"), "name": name, "input": params, **via})
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
                    **({"sent": out.result.get("content")} if out.result.get("content") != out.output else {}),
                    **via,
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

    async def read_inbox(self) -> None:
        """Messages sent to the run since the last turn (POST /api/runs/{id}/messages) join the next request."""
        if self.hooks.inbox is None:
            return
        for text in await self.hooks.inbox():
            await self.events.emit("run.message.delivered", {"turn": self.outcome.turns + 1, "text": text})
            self._add_user([_note(f"A message from the people running this routine arrived:\n{text}")])

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
        turns_left = self.budget.max_turns - self.outcome.turns
        minutes_left = self.budget.max_minutes - self._minutes()
        cost, max_cost = self.outcome.cost_usd, self.budget.max_cost_usd
        near_cost = max_cost is not None and cost >= 0.8 * max_cost
        if self._warned or (turns_left > 2 and minutes_left > 0.2 * self.budget.max_minutes and not near_cost):
            return None
        self._warned = True
        budget = f"{turns_left} turns and about {max(minutes_left, 0):.0f} minutes left"
        if max_cost is not None:
            budget += f", {_usd(cost)} of {_usd(max_cost)} spent"
        return _note(
            f"[Note from the runner: the run is close to its limits ({budget}). Wrap up now: leave the "
            "working tree in a consistent state and reply with your summary.]"
        )

    def _account(self, usage: dict[str, int]) -> float:
        """Add a response's usage (token counts, web searches) and its cost to the outcome; returns the cost."""
        turn = {key: int(usage.get(key) or 0) for key in USAGE_KEYS}
        for key, value in turn.items():
            self.outcome.usage[key] += value
        cost = self.budget.price(self.budget.model, turn) if self.budget.price is not None else 0.0
        self.outcome.cost_usd += cost
        return cost

    def _fixed_tokens(self) -> int:
        return ctx.approx_tokens(self.system) + ctx.approx_tokens(self.toolbox.definitions())

    def _minutes(self) -> float:
        return (self.clock() - self._started) / 60


def _text(content: list[JSON]) -> str:
    return "\n\n".join(str(b.get("text", "")) for b in content if b.get("type") == "text").strip()


def _note(text: str) -> JSON:
    return {"type": "text", "text": text}


def _usd(amount: float) -> str:
    return f"${amount:.2f}" if amount >= 1 else f"${amount:.4f}"
