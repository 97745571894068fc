"""Prompt caching, clearing old tool results and compaction: against the test server and scripted models."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from app.agent.context import (
    CLEARED,
    SUMMARY_REQUEST,
    approx_tokens,
    cache_read_share,
    clear_tool_results,
    context_window,
    prompt_tokens,
    with_cache_breakpoints,
)
from app.agent.loop import Agent, AgentOutcome, Budget, Window
from app.agent.prompts import build_system
from app.agent.tools.toolbox import Toolbox
from app.core.domain import JSON, Routine
from app.core.errors import PromptTooLong
from app.core.ports import Hands, ModelResponse
from app.models.anthropic import AnthropicModel
from app.models.scripted import ScriptedModel
from app.sandbox.local import LocalSandbox
from app.testing.anthropic_server import AnthropicState, Script, Turn, bash, create_app, text
from app.testing.serve import Served, serve_in_thread
from tests.support.events import Recorder

EPHEMERAL = {"type": "ephemeral"}




class OrderedModel:
    """Plays `turns` in order, but answers a summary request with `summary`; usage is the request's size."""

    def __init__(self, turns: list[ModelResponse], summary: str = "Summary: edited a.txt; b.txt remains.") -> None:
        self.turns, self.summary = list(turns), summary
        self.requests: list[JSON] = []

    async def create(
        self, *, model: str, system: list[JSON], messages: list[JSON], tools: list[JSON], max_tokens: int
    ) -> ModelResponse:
        self.requests.append(copy.deepcopy({"system": system, "messages": messages, "tools": tools}))
        usage = {"input_tokens": approx_tokens(system) + approx_tokens(messages) + approx_tokens(tools)}
        if SUMMARY_REQUEST in str(messages[-1]["content"]):
            return ModelResponse([{"type": "text", "text": self.summary}], "end_turn", {**usage, "output_tokens": 20})
        turn = self.turns.pop(0)
        return ModelResponse(copy.deepcopy(turn.content), turn.stop_reason, {**usage, "output_tokens": 30})


def big_reply(n: int) -> ModelResponse:
    content = [{"type": "text", "text": f"Thinking out loud {n}: " + "x" * 4000}, bash(f"echo step{n}")]
    content[1]["id"] = f"toolu_{n}"
    return ModelResponse(content, "tool_use")


@pytest.fixture
async def shell(tmp_path: Path) -> AsyncIterator[Hands]:
    sh = await LocalSandbox().hands(tmp_path, {})
    yield sh
    await sh.close()


@pytest.fixture
def anthropic() -> Iterator[tuple[AnthropicState, Served]]:
    state = AnthropicState()
    with serve_in_thread(create_app(state)) as served:
        yield state, served


def agent(
    model: object,
    shell: Hands,
    tmp_path: Path,
    events: Recorder,
    price: Callable[[str, dict[str, int]], float] | None = None,
    **kwargs: int,
) -> Agent:
    window = Window(kwargs.get("context_window_tokens"), kwargs.get("keep_tool_results", 3))
    budget = Budget("claude-sonnet-4-6", 40, 10, price=price)
    return Agent(model, Toolbox(["bash", "edit"], hands=shell), events, budget, window=window)  # type: ignore[arg-type]


def test_windows_by_model_prefix() -> None:
    assert context_window("claude-sonnet-4-6") == 200_000
    assert context_window("gpt-x") == 200_000
    assert context_window("claude-sonnet-4-6", {"claude-sonnet-4-6": 1_000_000}) == 1_000_000


def test_moving_breakpoints_mark_the_latest_two_user_messages_only() -> None:
    messages: list[JSON] = [
        {"role": "user", "content": "task"},
        {"role": "assistant", "content": [text("a")]},
        {
            "role": "user",
            "content": [
                text(
                    "r1",
                ),
                {**text("old"), "cache_control": EPHEMERAL},
            ],
        },
        {"role": "assistant", "content": [text("b")]},
        {"role": "user", "content": [text("r2"), text("r3")]},
    ]
    before = copy.deepcopy(messages)
    sent = with_cache_breakpoints(messages)

    assert messages == before
    marks = [
        (i, k)
        for i, m in enumerate(sent)
        for k, b in enumerate(m["content"])
        if isinstance(b, dict) and "cache_control" in b
    ]
    assert marks == [(2, 1), (4, 1)]
    assert sent[0] is messages[0] and sent[0]["content"] == "task"
    one = with_cache_breakpoints(messages[:1], 1)
    assert one[0]["content"] == [{"type": "text", "text": "task", "cache_control": EPHEMERAL}]
    assert with_cache_breakpoints(messages, 0)[2]["content"] == [text("r1"), text("old")]


def test_clearing_keeps_the_latest_results() -> None:
    messages: list[JSON] = [{"role": "user", "content": "task"}]
    for n in range(5):
        messages.append(
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"t{n}", "name": "bash", "input": {}}]}
        )
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{n}", "content": "y" * 400}]}
        )
    done = clear_tool_results(messages, keep=2)

    assert done.tool_use_ids == ["t0", "t1", "t2"] and done.tokens > 200
    contents = [m["content"][0]["content"] for m in messages[2::2]]
    assert contents == [CLEARED, CLEARED, CLEARED, "y" * 400, "y" * 400]
    assert clear_tool_results(messages, keep=2).tool_use_ids == []


async def test_a_20_turn_run_reads_most_of_its_input_from_the_cache(
    anthropic: tuple[AnthropicState, Served], shell: Hands, tmp_path: Path
) -> None:
    state, served = anthropic
    # ~2 KB of output a turn, like a file view or a test run
    turns = [Turn([text(f"Step {n}."), bash(f"seq {n * 1000} {n * 1000 + 400}")]) for n in range(19)]
    state.add_script(Script([*turns, Turn([text("Done: nothing to change.")])]))
    system = build_system(Routine(name="caching", repo="acme/calc", prompt="Look around."), workspace=tmp_path)
    events = Recorder()
    async with AnthropicModel("sk-ant-test", base_url=served.url) as model:
        outcome = await agent(model, shell, tmp_path, events).run(system, "Run the routine now.")

    assert outcome.error is None and outcome.turns == 20
    usages = [e["usage"] for e in events.of("model.turn")]
    share = cache_read_share(usages[1:])
    assert share >= 0.85, f"only {share:.0%} of the input after turn 1 came from the cache: {usages}"
    sizes = [prompt_tokens(u) for u in usages]
    cached_from = next(i for i, size in enumerate(sizes) if size >= state.min_cache_tokens)
    assert cached_from <= 2
    assert [u["cache_read_input_tokens"] for u in usages[cached_from + 1 :]] == sizes[cached_from:-1]
    for request in state.requests:
        last = request.body["messages"][-1]["content"][-1]
        assert last["cache_control"] == EPHEMERAL
        assert str(request.body).count("cache_control") <= 4


async def test_old_tool_results_are_cleared_in_one_big_step(shell: Hands, tmp_path: Path) -> None:
    turns = [Turn([bash(f"printf 'line %.0s' $(seq 1 400); echo {n}")]) for n in range(12)]
    model = ScriptedModel(Script([*turns, Turn([text("Done.")])]))
    events = Recorder()
    outcome = await agent(model, shell, tmp_path, events, context_window_tokens=4000, keep_tool_results=2).run(
        [], "Print lines."
    )

    assert outcome.error is None and outcome.summary == "Done." and outcome.turns == 13
    cleared = events.of("context.cleared")
    assert 1 <= len(cleared) <= 3 and not events.of("context.compacted")
    assert all(c["tokens_before"] > 3200 and c["tokens_after"] <= 2400 for c in cleared)
    assert len(cleared[0]["tool_use_ids"]) >= 3
    last = model.requests[-1]["messages"]
    results = [b["content"] for m in last if m["role"] == "user" for b in m["content"] if b["type"] == "tool_result"]
    assert results[-2:] == ["line " * 400 + "10\n", "line " * 400 + "11\n"]
    assert CLEARED in results[:-2]
    tool_events = events.of("tool.result")
    assert all(e["output"].startswith("line line") for e in tool_events)


async def test_when_clearing_is_not_enough_the_conversation_is_compacted(shell: Hands, tmp_path: Path) -> None:
    done = ModelResponse([{"type": "text", "text": "Done after compaction."}], "end_turn")
    model = OrderedModel([big_reply(1), big_reply(2), big_reply(3), big_reply(4), done])
    events = Recorder()
    a = agent(model, shell, tmp_path, events, lambda _m, usage: usage["input_tokens"] / 1e6, context_window_tokens=3000)
    outcome = await a.run([text("system")], "Fix a.txt and b.txt.")

    assert outcome.summary == "Done after compaction." and outcome.error is None
    compacted = events.of("context.compacted")
    assert len(compacted) == 1 and compacted[0]["reason"] == "near_window"
    assert compacted[0]["tokens_before"] > 2400 > compacted[0]["tokens_after"]
    summary_at = next(i for i, r in enumerate(model.requests) if SUMMARY_REQUEST in str(r["messages"][-1]))
    after = model.requests[summary_at + 1]["messages"]
    assert len(after) == 1 and after[0]["role"] == "user"
    texts = [b["text"] for b in after[0]["content"]]
    assert texts[0] == "Fix a.txt and b.txt." and "Summary: edited a.txt; b.txt remains." in texts[1]
    assert "Continue the task" in texts[2]
    assert outcome.turns == len(model.requests) - 1
    assert outcome.cost_usd == pytest.approx(sum(approx_request(r) for r in model.requests) / 1e6)
    assert compacted[0]["messages"] == outcome.messages[:1]


def approx_request(request: JSON) -> int:
    return approx_tokens(request["system"]) + approx_tokens(request["messages"]) + approx_tokens(request["tools"])


async def test_context_window_exceeded_compacts_once_and_goes_on(shell: Hands, tmp_path: Path) -> None:
    cut = ModelResponse(
        [text("Now the long part"), {**bash("echo cut"), "id": "toolu_cut"}], "model_context_window_exceeded"
    )
    done = ModelResponse([{"type": "text", "text": "Finished."}], "end_turn")
    model = OrderedModel([big_reply(1), cut, done])
    events = Recorder()
    outcome: AgentOutcome = await agent(model, shell, tmp_path, events).run([], "Task.")

    assert outcome.error is None and outcome.summary == "Finished."
    assert [e["reason"] for e in events.of("context.compacted")] == ["window_exceeded"]
    asked = model.requests[2]["messages"]
    results = [b for m in asked if m["role"] == "user" for b in m["content"] if b.get("type") == "tool_result"]
    assert results and all(b["content"] == CLEARED for b in results)
    assert asked[-2]["role"] == "assistant" and asked[-2]["content"] == [text("Now the long part")]
    assert [e["input"]["command"] for e in events.of("tool.call")] == ["echo step1"]


class WindowModel(OrderedModel):
    """An API whose window is `limit` tokens: a longer request is refused with a 400, as the real one does."""

    def __init__(self, turns: list[ModelResponse], limit: int) -> None:
        super().__init__(turns)
        self.limit, self.refused = limit, 0

    async def create(
        self, *, model: str, system: list[JSON], messages: list[JSON], tools: list[JSON], max_tokens: int
    ) -> ModelResponse:
        if approx_tokens(messages) > self.limit:
            self.refused += 1
            raise PromptTooLong(f"the Anthropic API refused the request (400): prompt is too long: > {self.limit}")
        return await super().create(model=model, system=system, messages=messages, tools=tools, max_tokens=max_tokens)


async def test_a_prompt_too_long_refusal_compacts_and_the_run_goes_on(shell: Hands, tmp_path: Path) -> None:
    flood = ModelResponse([{**bash("head -c 8000 /dev/zero | tr '\\0' x"), "id": "toolu_flood"}], "tool_use")
    done = ModelResponse([{"type": "text", "text": "Finished."}], "end_turn")
    model = WindowModel([flood, done], limit=1000)
    events = Recorder()
    outcome = await agent(model, shell, tmp_path, events).run([], "Task.")

    assert outcome.error is None and outcome.summary == "Finished."
    assert model.refused == 1 and [e["reason"] for e in events.of("context.compacted")] == ["window_exceeded"]


async def test_a_prompt_too_long_even_compacted_stops_with_a_clear_error(shell: Hands, tmp_path: Path) -> None:
    flood = ModelResponse([{**bash("head -c 8000 /dev/zero | tr '\\0' x"), "id": "toolu_flood"}], "tool_use")
    model = WindowModel([flood], limit=5)
    outcome = await agent(model, shell, tmp_path, Recorder()).run([], "Task.")
    assert outcome.error is not None and "context window" in outcome.error
