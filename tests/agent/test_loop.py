"""The agent loop against a canned model, a real shell and a real workspace."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.agent.loop import Agent, AgentOutcome, Budget, Window
from app.agent.tools.toolbox import Toolbox
from app.core.domain import JSON
from app.core.errors import ModelError
from app.core.ports import Hands, ModelResponse
from app.core.pricing import Price, Pricer
from app.sandbox.local import LocalSandbox
from tests.support.events import Recorder


class CannedModel:
    """A ModelClient that plays ModelResponses in order and records every request."""

    def __init__(self, *responses: ModelResponse | ModelError) -> None:
        self.responses = list(responses)
        self.requests: list[JSON] = []

    async def create(
        self, *, model: str, system: list[JSON], messages: list[JSON], tools: list[JSON], max_tokens: int
    ) -> ModelResponse:
        self.requests.append(copy.deepcopy({"model": model, "system": system, "messages": messages, "tools": tools}))
        response = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(response, ModelError):
            raise response
        return copy.deepcopy(response)




def bash(command: str, id: str = "toolu_1", stop: str = "tool_use") -> ModelResponse:
    return ModelResponse(
        content=[
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": id, "name": "bash", "input": {"command": command}},
        ],
        stop_reason=stop,
        usage={"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 50},
    )


def says(text: str, stop: str = "end_turn") -> ModelResponse:
    return ModelResponse(
        content=[{"type": "text", "text": text}], stop_reason=stop, usage={"input_tokens": 10, "output_tokens": 5}
    )


@pytest.fixture
async def shell(tmp_path: Path) -> AsyncIterator[Hands]:
    sh = await LocalSandbox().hands(tmp_path, {})
    yield sh
    await sh.close()


async def run(model: CannedModel, shell: Hands, tmp_path: Path, **limits: float) -> tuple[AgentOutcome, Recorder]:
    events = Recorder()
    toolbox = Toolbox(["bash", "edit"], hands=shell)
    budget = Budget(
        "claude-test",
        max_turns=int(limits.pop("max_turns", 10)),
        max_minutes=limits.pop("max_minutes", 30),
        max_cost_usd=limits.pop("max_cost_usd", None),
        price=lambda _model, usage: usage["input_tokens"] / 1000 + usage["cache_read_input_tokens"] / 10_000,
    )
    window = Window(tokens=int(limits["context_window_tokens"])) if "context_window_tokens" in limits else None
    agent = Agent(model, toolbox, events, budget, window=window)
    return await agent.run([{"type": "text", "text": "system"}], "Fix the bug."), events


async def test_tool_use_then_end_turn(shell: Hands, tmp_path: Path) -> None:
    model = CannedModel(bash("echo fixed > f.txt && cat f.txt"), says("Wrote f.txt because it was missing."))
    outcome, events = await run(model, shell, tmp_path)

    assert outcome.error is None and outcome.limit is None
    assert outcome.summary == "Wrote f.txt because it was missing."
    assert (tmp_path / "f.txt").read_text() == "fixed\n"
    assert events.types == ["model.request", "model.turn", "tool.call", "tool.result", "model.request", "model.turn"]
    assert events.events[2][1] == {
        "id": "toolu_1",
        "name": "bash",
        "input": {"command": "echo fixed > f.txt && cat f.txt"},
    }
    assert events.events[3][1] == {
        "id": "toolu_1",
        "name": "bash",
        "output": "fixed\n",
        "is_error": False,
        "exit_code": 0,
    }
    second = model.requests[1]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[2]["content"] == [
        {
            "type": "tool_result",
            "tool_use_id": "toolu_1",
            "content": "fixed\n",
            "is_error": False,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    assert outcome.messages[2]["content"][0].get("cache_control") is None
    assert model.requests[0]["tools"][0] == {"type": "bash_20250124", "name": "bash"}
    assert outcome.turns == 2
    assert outcome.commands == ["echo fixed > f.txt && cat f.txt"]
    assert outcome.usage == {
        "input_tokens": 110,
        "output_tokens": 25,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 50,
        "web_search_requests": 0,
    }
    assert outcome.cost_usd == pytest.approx(0.115)
    assert outcome.messages[-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Wrote f.txt because it was missing."}],
    }


async def test_max_turns_warns_then_stops(shell: Hands, tmp_path: Path) -> None:
    model = CannedModel(bash("echo again"))
    outcome, events = await run(model, shell, tmp_path, max_turns=4)

    assert outcome.limit == "max_turns" and outcome.turns == 4 and len(model.requests) == 4
    assert outcome.error is not None and "4 turns" in outcome.error and "max_turns" in outcome.error
    assert outcome.summary == "Let me look."
    notes = [
        [b["text"] for b in m["content"] if b["type"] == "text" and "Wrap up" in b["text"]]
        for m in model.requests[-1]["messages"]
        if m["role"] == "user"
    ]
    assert [len(n) for n in notes] == [0, 0, 1, 0]
    assert "2 turns" in notes[2][0]
    assert model.requests[2]["messages"][-1]["content"][-1]["text"] == notes[2][0]
    assert events.types.count("tool.result") == 4


async def test_max_minutes_stops_the_run(shell: Hands, tmp_path: Path) -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 60.0
        return now[0]

    events = Recorder()
    agent = Agent(CannedModel(bash("true")), Toolbox(["bash"], hands=shell), events, Budget("m", 100, 5), clock=clock)
    outcome = await agent.run([], "go")
    assert outcome.limit == "max_minutes" and outcome.error is not None and "5 minutes" in outcome.error
    assert 0 < outcome.turns < 5


async def test_refusal_stops_with_an_error(shell: Hands, tmp_path: Path) -> None:
    outcome, _ = await run(CannedModel(says("I can't help with that.", stop="refusal")), shell, tmp_path)
    assert outcome.error == "the model refused: I can't help with that."
    assert outcome.limit is None and outcome.turns == 1


async def test_context_window_exceeded_twice_in_a_row_stops_with_an_error(shell: Hands, tmp_path: Path) -> None:
    exceeded = says("", stop="model_context_window_exceeded")
    model = CannedModel(exceeded, says("Summary: nothing done yet."), exceeded)
    outcome, events = await run(model, shell, tmp_path)
    assert outcome.error is not None and "context window" in outcome.error and "compacted" in outcome.error
    assert events.types.count("context.compacted") == 1 and outcome.turns == 2


async def test_max_cost_usd_warns_at_80_percent_then_stops_naming_the_limit(shell: Hands, tmp_path: Path) -> None:
    model = CannedModel(bash("echo again"))
    # each turn: 100 input tokens → $0.10, 50 cache reads → $0.005 under the test price
    outcome, _ = await run(model, shell, tmp_path, max_cost_usd=0.5)

    assert outcome.limit == "max_cost_usd" and outcome.turns == 5 and len(model.requests) == 5
    assert outcome.cost_usd == pytest.approx(0.525)
    assert outcome.error is not None
    assert outcome.error.startswith("max_cost_usd ($0.5) reached after 5 turns ($0.5250 spent)")
    assert "raise limits.max_cost_usd" in outcome.error
    told = [
        b["text"]
        for m in model.requests[-1]["messages"]
        if m["role"] == "user"
        for b in m["content"]
        if b["type"] == "text" and "Wrap up now" in b["text"]
    ]
    assert len(told) == 1 and "$0.4200 of $0.5000 spent" in told[0]
    assert "Wrap up now" in str(model.requests[4]["messages"][-1]["content"])
    assert "Wrap up now" not in str(model.requests[3]["messages"][-1]["content"])


async def test_usage_sums_all_four_counts_and_each_is_priced(shell: Hands, tmp_path: Path) -> None:
    usage = {
        "input_tokens": 1000,
        "output_tokens": 200,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 40_000,
    }
    model = CannedModel(
        ModelResponse(bash("true").content, "tool_use", usage),
        ModelResponse([{"type": "text", "text": "Done."}], "end_turn", usage),
    )
    price = Pricer({"claude-sonnet-4-6": Price(3, 15, 3.75, 0.3)})
    agent = Agent(model, Toolbox(["bash"], hands=shell), Recorder(), Budget("claude-sonnet-4-6", 5, 5, price=price))
    outcome = await agent.run([], "go")
    assert outcome.usage == {"web_search_requests": 0, **{key: 2 * value for key, value in usage.items()}}
    assert outcome.cost_usd == pytest.approx(2 * (1000 * 3 + 200 * 15 + 3000 * 3.75 + 40_000 * 0.3) / 1e6)


async def test_pause_turn_sends_the_content_back_as_is(shell: Hands, tmp_path: Path) -> None:
    paused = ModelResponse(
        content=[{"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}}],
        stop_reason="pause_turn",
    )
    model = CannedModel(paused, says("Done after the pause."))
    outcome, _ = await run(model, shell, tmp_path)
    assert outcome.summary == "Done after the pause." and outcome.turns == 2
    assert model.requests[1]["messages"][-1] == {"role": "assistant", "content": paused.content}


async def test_max_tokens_asks_to_continue(shell: Hands, tmp_path: Path) -> None:
    model = CannedModel(says("Half of the ans", stop="max_tokens"), says("wer."))
    outcome, _ = await run(model, shell, tmp_path)
    assert outcome.turns == 2 and outcome.summary == "wer."
    last = model.requests[1]["messages"][-1]
    assert last["role"] == "user" and "cut off" in last["content"][0]["text"]


async def test_max_tokens_does_not_run_a_cut_tool_call(shell: Hands, tmp_path: Path) -> None:
    model = CannedModel(bash("touch marker", stop="max_tokens"), says("Gave up."))
    outcome, events = await run(model, shell, tmp_path)
    assert not (tmp_path / "marker").exists()
    assert outcome.commands == [] and "tool.call" not in events.types
    result = model.requests[1]["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_1" and result["is_error"] is True


async def test_model_errors_propagate(shell: Hands, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="overloaded"):
        await run(CannedModel(ModelError("overloaded after 4 retries")), shell, tmp_path)
