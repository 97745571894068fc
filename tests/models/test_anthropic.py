"""AnthropicModel, the real SDK client, against the Anthropic test server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from app.core.errors import ModelError, PromptTooLong
from app.core.ports import MODEL_ANSWERING
from app.core.pricing import cost_usd
from app.models.anthropic import AnthropicModel
from app.models.scripts import web_search
from app.testing.anthropic_server import AnthropicState, Script, Turn, bash, create_app, edit_view, text
from app.testing.serve import Served, free_port, serve_in_thread

MODEL = "claude-sonnet-4-6"
KEY = "sk-ant-test-0123456789abcdef"
USER = {"role": "user", "content": "Fix the failing test."}
SYSTEM = [{"type": "text", "text": "You are a careful engineer."}]
TOOLS = [{"name": "bash", "description": "Run a command", "input_schema": {"type": "object", "properties": {}}}]


@pytest.fixture
def state() -> AnthropicState:
    return AnthropicState(api_keys={KEY})


@pytest.fixture
def server(state: AnthropicState) -> Iterator[Served]:
    with serve_in_thread(create_app(state)) as served:
        yield served


async def ask(model: AnthropicModel, messages: list[Any]) -> Any:
    return await model.create(model=MODEL, system=SYSTEM, messages=messages, tools=TOOLS, max_tokens=2000)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_session_of_tool_use_then_end_turn(state: AnthropicState, server: Served, stream: bool) -> None:
    state.add_script(Script([Turn([text("Looking."), bash("pytest -q"), edit_view("app.py")]), Turn([text("Done.")])]))
    async with AnthropicModel(KEY, server.url, max_retries=0, timeout_s=10, stream=stream) as model:
        first = await ask(model, [USER])
        assert first.stop_reason == "tool_use"
        assert first.content[0] == {"type": "text", "text": "Looking."}
        calls = first.content[1:]
        assert [(c["type"], c["name"], c["input"]) for c in calls] == [
            ("tool_use", "bash", {"command": "pytest -q"}),
            ("tool_use", "str_replace_based_edit_tool", {"command": "view", "path": "app.py"}),
        ]
        assert set(calls[0]) == {"type", "id", "name", "input"}
        assert set(first.usage) == {
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "web_search_requests",
        }
        assert first.usage["web_search_requests"] == 0
        assert first.model == MODEL and first.id
        results = [{"type": "tool_result", "tool_use_id": c["id"], "content": "ok"} for c in calls]
        # the content goes back as returned; the server refuses anything the API would refuse
        second = await ask(
            model, [USER, {"role": "assistant", "content": first.content}, {"role": "user", "content": results}]
        )
    assert second.stop_reason == "end_turn"
    assert second.content == [{"type": "text", "text": "Done."}]
    assert state.statuses == [200, 200]
    assert state.requests[0].body.get("stream", False) is stream
    assert state.requests[0].body["system"] == SYSTEM


@pytest.mark.parametrize("stream", [True, False])
async def test_the_client_says_when_the_model_has_the_request_and_answers(
    state: AnthropicState, server: Served, stream: bool
) -> None:
    state.add_script(Script([Turn([text("made it")], faults=[529])]))
    received: list[int] = []
    token = MODEL_ANSWERING.set(lambda: received.append(len(state.requests)))
    try:
        async with AnthropicModel(KEY, server.url, max_retries=1, timeout_s=10, stream=stream) as model:
            reply = await ask(model, [USER])
    finally:
        MODEL_ANSWERING.reset(token)
    assert reply.content == [{"type": "text", "text": "made it"}]
    assert received == [2], "said once, when the request the model answers had reached it (not the refused one)"


async def test_warming_up_sends_a_streamed_and_a_plain_request_to_a_canned_answer() -> None:
    answers = await asyncio.to_thread(AnthropicModel.warm)  # its own event loop, as at a worker's start
    assert [(a.stop_reason, a.content) for a in answers] == [
        (
            "tool_use",
            [
                {"type": "text", "text": "ok"},
                {"type": "tool_use", "id": "toolu_warm_up", "name": "bash", "input": {"command": "true"}},
            ],
        )
    ] * 2


async def test_two_overloads_then_success(state: AnthropicState, server: Served) -> None:
    state.add_script(Script([Turn([text("made it")], faults=[529, 529])]))
    async with AnthropicModel(KEY, server.url, max_retries=2, timeout_s=10) as model:
        reply = await ask(model, [USER])
    assert reply.content == [{"type": "text", "text": "made it"}]
    assert state.statuses == [529, 529, 200]


async def test_persistent_overload_is_a_clear_model_error(state: AnthropicState, server: Served) -> None:
    state.add_script(Script([Turn([text("never")], faults=[529] * 10)]))
    async with AnthropicModel(KEY, server.url, max_retries=2, timeout_s=10) as model:
        with pytest.raises(ModelError) as caught:
            await ask(model, [USER])
    assert str(caught.value) == "the Anthropic API is overloaded (529) after 3 attempts; the run can be retried later"
    assert len(state.requests) == 3


async def test_rate_limit_names_the_fix(state: AnthropicState, server: Served) -> None:
    state.add_script(Script([Turn([text("never")], faults=[429] * 10)]))
    async with AnthropicModel(KEY, server.url, max_retries=1, timeout_s=10) as model:
        with pytest.raises(ModelError, match=r"rate limit was hit \(429\) after 2 attempts.*ROUTINES_MAX_JOBS"):
            await ask(model, [USER])


async def test_a_refused_key_is_a_model_error_without_the_key(state: AnthropicState, server: Served) -> None:
    state.add_script(Script([Turn([text("never")])]))
    wrong = "sk-ant-wrong-key-0000000000"
    async with AnthropicModel(wrong, server.url, max_retries=3, timeout_s=10) as model:
        with pytest.raises(ModelError) as caught:
            await ask(model, [USER])
    assert str(caught.value).startswith("ANTHROPIC_API_KEY was refused (401")
    assert "set a valid key" in str(caught.value)
    assert wrong not in str(caught.value)
    assert len(state.requests) == 1
    assert state.requests[0].api_key == wrong


async def test_an_unanswered_tool_use_is_a_model_error(state: AnthropicState, server: Served) -> None:
    state.add_script(Script([Turn([bash("ls")]), Turn([text("done")])]))
    async with AnthropicModel(KEY, server.url, max_retries=2, timeout_s=10) as model:
        first = await ask(model, [USER])
        with pytest.raises(ModelError, match=r"refused the request \(400: messages.2: `tool_use` ids were found"):
            await ask(model, [USER, {"role": "assistant", "content": first.content}, {"role": "user", "content": "?"}])
    assert state.statuses == [200, 400]


async def test_an_unreachable_api_is_a_model_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AnthropicModel(KEY, url, max_retries=0, timeout_s=5) as model:
        with pytest.raises(ModelError, match=f"could not reach the Anthropic API at {url} after 1 attempt .*"):
            await ask(model, [USER])


async def test_concurrent_sessions_each_follow_their_own_conversation(state: AnthropicState, server: Served) -> None:
    state.add_script(Script([Turn([bash("make test")]), Turn([text("green")])]))

    async def session(model: AnthropicModel, n: int) -> str:
        user = {"role": "user", "content": f"session {n}"}
        first = await ask(model, [user])
        result = {"type": "tool_result", "tool_use_id": first.content[0]["id"], "content": "ok"}
        second = await ask(
            model, [user, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
        )
        return str(second.content[0]["text"])

    async with AnthropicModel(KEY, server.url, max_retries=0, timeout_s=10) as model:
        finals = await asyncio.gather(*(session(model, n) for n in range(6)))
    assert finals == ["green"] * 6
    assert len(state.requests) == 12


async def test_web_searches_are_counted_and_priced_per_search(state: AnthropicState, server: Served) -> None:
    state.add_script(Script([Turn([*web_search("cve", [("https://a", "A")]), *web_search("fix", []), text("Ok.")])]))
    async with AnthropicModel(KEY, server.url, max_retries=0, timeout_s=10) as model:
        answer = await ask(model, [USER])
    assert answer.usage["web_search_requests"] == 2
    tokens_only = {**answer.usage, "web_search_requests": 0}
    assert cost_usd(MODEL, answer.usage) == pytest.approx(cost_usd(MODEL, tokens_only) + 0.02)


async def test_a_prompt_over_the_window_is_a_prompt_too_long_error(state: AnthropicState, server: Served) -> None:
    state.context_window = 50
    state.add_script(Script([Turn([text("never")])]))
    async with AnthropicModel(KEY, server.url, max_retries=0, timeout_s=10) as model:
        with pytest.raises(PromptTooLong, match="prompt is too long"):
            await ask(model, [{"role": "user", "content": "x" * 2000}])
