"""ScriptedModel: deterministic turns chosen by conversation position, like the test server."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.errors import ModelError
from app.core.ports import ModelResponse
from app.models.scripted import ScriptedModel
from app.models.scripts import Script, Turn, bash, edit_create, text

USER = {"role": "user", "content": "Add a README."}


async def ask(model: ScriptedModel, messages: list[Any]) -> ModelResponse:
    return await model.create(model="claude-sonnet-4-6", system=[], messages=messages, tools=[], max_tokens=100)


def answered(reply: ModelResponse) -> list[Any]:
    results = [
        {"type": "tool_result", "tool_use_id": b["id"], "content": "ok"}
        for b in reply.content
        if b["type"] == "tool_use"
    ]
    return [{"role": "assistant", "content": reply.content}, {"role": "user", "content": results}]


async def test_a_script_plays_turn_by_turn() -> None:
    model = ScriptedModel(Script([Turn([text("Writing."), edit_create("README.md", "# hi\n")]), Turn([text("Done.")])]))
    first = await ask(model, [USER])
    assert first.stop_reason == "tool_use"
    call = first.content[1]
    assert call == {
        "type": "tool_use",
        "id": call["id"],
        "name": "str_replace_based_edit_tool",
        "input": {"command": "create", "path": "README.md", "file_text": "# hi\n"},
    }
    assert call["id"].startswith("toolu_")
    second = await ask(model, [USER, *answered(first)])
    assert (second.stop_reason, second.content) == ("end_turn", [text("Done.")])
    assert second.usage["input_tokens"] > first.usage["input_tokens"] > 0
    assert [len(r["messages"]) for r in model.requests] == [1, 3]


async def test_given_responses_are_returned_by_position() -> None:
    scripted = [
        ModelResponse([bash("ls")], "tool_use", {"input_tokens": 7, "output_tokens": 3}),
        ModelResponse([text("bye")], "end_turn"),
    ]
    model = ScriptedModel(scripted)
    first = await ask(model, [USER])
    assert first.usage == {"input_tokens": 7, "output_tokens": 3}
    assert first.content[0]["id"]
    # a resumed conversation (rebuilt from events) gets the next turn, not the first
    resumed = await ScriptedModel(scripted).create(
        model="m", system=[], messages=[USER, *answered(first)], tools=[], max_tokens=10
    )
    assert resumed.content == [text("bye")]
    assert resumed.usage["output_tokens"] > 0


async def test_the_script_running_out_is_a_model_error_unless_it_loops() -> None:
    model = ScriptedModel([ModelResponse([bash("true")], None)])
    first = await ask(model, [USER])
    with pytest.raises(ModelError, match="has 1 turns and the conversation already has 1 assistant turns"):
        await ask(model, [USER, *answered(first)])

    looping = ScriptedModel([ModelResponse([bash("true")], None)], loop_last=True)
    messages: list[Any] = [USER]
    for _ in range(4):
        reply = await ask(looping, messages)
        assert reply.stop_reason == "tool_use"
        messages += answered(reply)
    assert len({m["content"][0]["tool_use_id"] for m in messages[2::2]}) == 4


async def test_requests_the_api_would_refuse_are_refused() -> None:
    model = ScriptedModel(Script([Turn([bash("ls")]), Turn([text("done")])]))
    first = await ask(model, [USER])
    unanswered = [USER, {"role": "assistant", "content": first.content}, {"role": "user", "content": "go on"}]
    with pytest.raises(ModelError, match="`tool_use` ids were found without `tool_result` blocks"):
        await ask(model, unanswered)
    with pytest.raises(ModelError, match="roles must alternate"):
        await ask(model, [USER, USER])


async def test_requests_are_recorded_as_they_were_sent() -> None:
    model = ScriptedModel([ModelResponse([text("ok")], "end_turn")])
    messages: list[Any] = [USER]
    await ask(model, messages)
    messages.append({"role": "assistant", "content": "changed later"})
    assert model.requests[0]["messages"] == [USER]
