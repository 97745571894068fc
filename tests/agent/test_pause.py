import copy
from pathlib import Path

from app.agent.loop import Agent, Budget
from app.agent.tools import Toolbox
from app.core.ports import ModelResponse
from app.models.scripts import Turn, bash, check_messages, play, text, web_search
from app.sandbox.local import LocalSandbox


class Canned:
    def __init__(self, *turns):
        self.turns = list(turns)
        self.requests = []

    async def create(self, *, model, system, messages, tools, max_tokens):
        self.requests.append(copy.deepcopy(messages))
        assert check_messages(messages) is None, check_messages(messages)
        turn = self.turns.pop(0)
        content = play(turn, iter(f"toolu_{i}" for i in range(100)).__next__)
        return ModelResponse(content, turn.final_stop_reason, {"input_tokens": 1, "output_tokens": 1})


class Sink:
    def __init__(self):
        self.events = []

    async def emit(self, type, data):
        self.events.append((type, data))


async def test_pause(tmp_path: Path):
    model = Canned(
        Turn(web_search("q", [("https://a", "A")], id="srv_1"), stop_reason="pause_turn"),
        Turn([text("found"), bash("true")]),
        Turn([text("done")]),
    )
    shell = await LocalSandbox().hands(tmp_path, {})
    sink = Sink()
    agent = Agent(model, Toolbox(["bash", "web_search"], hands=shell), sink, Budget("m", 5, 1))
    out = await agent.run([text("s")], "go")
    await shell.close()
    assert out.error is None and out.summary == "done"
    assert model.requests[1][-1]["role"] == "assistant"
    assert [m["role"] for m in model.requests[2]] == ["user", "assistant", "user"]
    assert [b["type"] for b in model.requests[2][1]["content"]] == [
        "server_tool_use",
        "web_search_tool_result",
        "text",
        "tool_use",
    ]
    assert [t for t, _ in sink.events if t.startswith("server_tool")] == ["server_tool.call", "server_tool.result"]
