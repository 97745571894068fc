"""A `pause_turn` from the API (a long server-side tool) is continued as the API asks: the paused
assistant turn goes back as the last message, with no user turn after it."""

from __future__ import annotations

import copy
from pathlib import Path

from app.agent.loop import Agent, Budget
from app.agent.tools.toolbox import Toolbox
from app.core.domain import JSON
from app.core.ports import ModelResponse
from app.models.scripts import Turn, bash, check_messages, play, text, web_search
from app.sandbox.local import LocalSandbox
from tests.support.events import Recorder


class Canned:
    """Plays `turns` in order and keeps every request's messages."""

    def __init__(self, *turns: Turn) -> None:
        self.turns = list(turns)
        self.requests: list[list[JSON]] = []

    async def create(
        self, *, model: str, system: list[JSON], messages: list[JSON], tools: list[JSON], max_tokens: int
    ) -> ModelResponse:
        self.requests.append(copy.deepcopy(messages))
        problem = check_messages(messages)
        assert problem is None, problem
        turn = self.turns.pop(0)
        content = play(turn, iter(f"toolu_{i}" for i in range(100)).__next__)
        return ModelResponse(content, turn.final_stop_reason, {"input_tokens": 1, "output_tokens": 1})


async def test_a_paused_turn_is_sent_back_as_the_last_message(tmp_path: Path) -> None:
    model = Canned(
        Turn(web_search("q", [("https://a", "A")], id="srv_1"), stop_reason="pause_turn"),
        Turn([text("found"), bash("true")]),
        Turn([text("done")]),
    )
    hands = await LocalSandbox().hands(tmp_path, {})
    try:
        events = Recorder()
        agent = Agent(model, Toolbox(["bash", "web_search"], hands=hands), events, Budget("m", 5, 1))
        out = await agent.run([text("s")], "go")
    finally:
        await hands.close()
    assert out.error is None and out.summary == "done"
    assert model.requests[1][-1]["role"] == "assistant"
    assert [m["role"] for m in model.requests[2]] == ["user", "assistant", "user"]
    assert [b["type"] for b in model.requests[2][1]["content"]] == [
        "server_tool_use",
        "web_search_tool_result",
        "text",
        "tool_use",
    ]
    assert [t for t in events.types if t.startswith("server_tool")] == ["server_tool.call", "server_tool.result"]
