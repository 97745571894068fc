"""The Anthropic test server, driven by the real `anthropic` SDK and by raw HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from app.core.errors import ConfigError
from app.testing.anthropic_server import (
    AnthropicState,
    Script,
    Turn,
    bash,
    create_app,
    edit_create,
    edit_str_replace,
    edit_view,
    load_script,
    load_scripts,
    text,
)
from app.testing.serve import Served, free_port, serve_in_thread

MODEL = "claude-sonnet-4-6"
USER = {"role": "user", "content": "Fix the failing test."}
HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}


@pytest.fixture
def state() -> AnthropicState:
    return AnthropicState()


@pytest.fixture
def server(state: AnthropicState) -> Iterator[Served]:
    with serve_in_thread(create_app(state)) as served:
        yield served


@pytest.fixture
def client(server: Served) -> Iterator[Any]:
    with anthropic.Anthropic(api_key="test-key", base_url=server.url, max_retries=2) as c:
        yield c


def two_turns() -> Script:
    return Script([Turn([text("Let me look."), bash("pytest -q")]), Turn([text("Fixed.")])])


def answer(tool_use: Any, output: str = "ok") -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": output}]}


@pytest.mark.parametrize("streaming", [False, True])
def test_a_tool_use_turn_then_end_turn(state: AnthropicState, client: Any, streaming: bool) -> None:
    state.add_script(two_turns())

    def ask(messages: list[Any]) -> Any:
        if not streaming:
            return client.messages.create(model=MODEL, max_tokens=1000, messages=messages)
        with client.messages.stream(model=MODEL, max_tokens=1000, messages=messages) as stream:
            return stream.get_final_message()

    first = ask([USER])
    assert first.stop_reason == "tool_use"
    assert first.content[0].text == "Let me look."
    call = first.content[1]
    assert (call.type, call.name, call.input) == ("tool_use", "bash", {"command": "pytest -q"})
    assert call.id.startswith("toolu_")
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0

    second = ask([USER, {"role": "assistant", "content": first.content}, answer(call)])
    assert second.stop_reason == "end_turn"
    assert [b.text for b in second.content] == ["Fixed."]
    assert [r.body.get("stream", False) for r in state.requests] == [streaming, streaming]


def test_streaming_sends_the_api_event_sequence(state: AnthropicState, server: Served) -> None:
    state.add_script(Script([Turn([text("Hi"), edit_view("README.md")])]))
    body = {"model": MODEL, "max_tokens": 100, "messages": [USER], "stream": True}
    response = httpx2.post(f"{server.url}/v1/messages", json=body, headers=HEADERS)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    datas = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        *["content_block_delta"] * (len(events) - 9),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    partial = "".join(
        d["delta"]["partial_json"] for d in datas if d["type"] == "content_block_delta" and d["index"] == 1
    )
    assert json.loads(partial) == {"command": "view", "path": "README.md"}
    delta = next(d for d in datas if d["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert set(delta["usage"]) >= {"input_tokens", "output_tokens", "cache_read_input_tokens"}


def test_a_missing_or_wrong_key_is_401_in_the_api_error_shape(state: AnthropicState, server: Served) -> None:
    state.add_script(two_turns())
    state.api_keys = {"test-key"}
    body = {"model": MODEL, "max_tokens": 10, "messages": [USER]}
    missing = httpx2.post(f"{server.url}/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert missing.status_code == 401
    assert missing.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "x-api-key header is required"},
    }
    wrong = httpx2.post(f"{server.url}/v1/messages", json=body, headers={**HEADERS, "x-api-key": "nope"})
    assert wrong.status_code == 401
    good = httpx2.post(f"{server.url}/v1/messages", json=body, headers=HEADERS)
    assert good.status_code == 200
    elsewhere = httpx2.post(f"{server.url}/v1/complete", json=body, headers=HEADERS)
    assert (elsewhere.status_code, elsewhere.json()["error"]["type"]) == (404, "not_found_error")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_tokens": 10, "messages": [USER]}, "model: Field required"),
        ({"model": MODEL, "messages": [USER]}, "max_tokens: Field required"),
        ({"model": MODEL, "max_tokens": 10}, "messages: Field required"),
        ({"model": MODEL, "max_tokens": 10, "messages": [USER, USER]}, "roles must alternate"),
        ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "assistant", "content": "x"}]}, "first message"),
    ],
)
def test_invalid_requests_are_400(state: AnthropicState, server: Served, body: dict[str, Any], message: str) -> None:
    state.add_script(two_turns())
    response = httpx2.post(f"{server.url}/v1/messages", json=body, headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert message in response.json()["error"]["message"]


def test_an_unanswered_tool_use_is_refused(state: AnthropicState, client: Any) -> None:
    state.add_script(two_turns())
    first = client.messages.create(model=MODEL, max_tokens=100, messages=[USER])
    messages = [USER, {"role": "assistant", "content": first.content}, {"role": "user", "content": "go on"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=messages)
    assert "`tool_use` ids were found without `tool_result` blocks" in str(caught.value)
    assert first.content[1].id in str(caught.value)


def test_faults_are_answered_first_then_the_turn(state: AnthropicState, client: Any) -> None:
    state.add_script(Script([Turn([text("after the storm")], faults=[529, 429])]))
    message = client.messages.create(model=MODEL, max_tokens=100, messages=[USER])
    assert message.content[0].text == "after the storm"
    assert state.statuses == [529, 429, 200]
    assert [r.headers["x-stainless-retry-count"] for r in state.requests] == ["0", "1", "2"]


def test_the_turn_follows_the_conversation_not_the_connection(state: AnthropicState, server: Served) -> None:
    state.add_script(Script([Turn([text("one")]), Turn([text("two")]), Turn([text("three")])]))
    resumed = [USER, {"role": "assistant", "content": "one"}, {"role": "user", "content": "next"}]
    resumed += [{"role": "assistant", "content": "two"}, {"role": "user", "content": "next"}]
    body = {"model": MODEL, "max_tokens": 10, "messages": resumed}
    response = httpx2.post(f"{server.url}/v1/messages", json=body, headers=HEADERS)
    assert response.json()["content"] == [{"type": "text", "text": "three"}]
    over = httpx2.post(
        f"{server.url}/v1/messages",
        json={**body, "messages": [*resumed, {"role": "assistant", "content": "three"}, USER]},
        headers=HEADERS,
    )
    assert over.status_code == 400
    assert "has 3 turns" in over.json()["error"]["message"]


def test_loop_last_answers_forever(state: AnthropicState, client: Any) -> None:
    state.add_script(Script([Turn([bash("sleep 1")])], loop_last=True))
    messages: list[Any] = [USER]
    for _ in range(5):
        reply = client.messages.create(model=MODEL, max_tokens=100, messages=messages)
        assert reply.stop_reason == "tool_use"
        messages += [{"role": "assistant", "content": reply.content}, answer(reply.content[0])]
    ids = {m["content"][0]["tool_use_id"] for m in messages[2::2]}
    assert len(ids) == 5


def test_scripts_are_chosen_by_match(state: AnthropicState, client: Any) -> None:
    state.add_script(Script([Turn([text("default")])]))
    state.add_script(Script([Turn([text("triage")])], match="triage"))
    state.add_script(Script([Turn([text("review")])], match="REVIEW"))

    def first_text(**kwargs: Any) -> str:
        reply = client.messages.create(model=MODEL, max_tokens=100, **kwargs)
        return str(reply.content[0].text)

    assert first_text(messages=[USER]) == "default"
    assert first_text(messages=[USER], system=[{"type": "text", "text": "You triage issues."}]) == "triage"
    assert first_text(messages=[{"role": "user", "content": [{"type": "text", "text": "REVIEW pr 4"}]}]) == "review"


def cached_body(prompt: str, model: str = MODEL) -> dict[str, Any]:
    system = [{"type": "text", "text": prompt, "cache_control": {"type": "ephemeral"}}]
    return {"model": model, "max_tokens": 100, "system": system, "messages": [USER]}


def test_a_repeated_prefix_is_read_from_the_cache(state: AnthropicState, client: Any) -> None:
    state.add_script(Script([Turn([text("ok")])]))
    prompt = "You are a careful engineer. " * 200  # ~1400 tokens at 4 characters a token
    first = client.messages.create(**cached_body(prompt))
    assert first.usage.cache_creation_input_tokens >= 1024
    assert first.usage.cache_read_input_tokens == 0
    second = client.messages.create(**cached_body(prompt))
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == first.usage.input_tokens
    other = client.messages.create(**cached_body(prompt + "!"))
    assert other.usage.cache_read_input_tokens == 0


def test_a_prefix_below_the_minimum_is_not_cached(state: AnthropicState, client: Any) -> None:
    state.add_script(Script([Turn([text("ok")])]))
    prompt = "You are a careful engineer. " * 200
    for _ in range(2):
        reply = client.messages.create(**cached_body(prompt, model="claude-haiku-4-5"))
        assert reply.usage.cache_creation_input_tokens == 0
        assert reply.usage.cache_read_input_tokens == 0


def test_more_than_four_breakpoints_is_400(state: AnthropicState, client: Any) -> None:
    state.add_script(Script([Turn([text("ok")])]))
    system = [{"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}} for i in range(5)]
    with pytest.raises(anthropic.BadRequestError, match="A maximum of 4 blocks with cache_control"):
        client.messages.create(model=MODEL, max_tokens=10, system=system, messages=[USER])


SCRIPT_YAML = """
name: fixer
match: failing test
turns:
  - [{text: "Looking."}, {bash: "pytest -q"}]
  - content: [{edit: {command: str_replace, path: app.py, old_str: "1", new_str: "2"}}]
    faults: [529]
  - "Done."
"""


def test_scripts_load_from_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "s.yml").write_text(SCRIPT_YAML)
    script = load_script(tmp_path / "s.yml")
    assert script.match == "failing test"
    assert script.turns[0].content == [text("Looking."), bash("pytest -q")]
    assert script.turns[1].content == [edit_str_replace("app.py", "1", "2")]
    assert script.turns[1].faults == [529]
    assert script.turns[2].content == [text("Done.")] and script.turns[2].final_stop_reason == "end_turn"
    data = {"scripts": [{"turns": [[edit_create("a.txt", "hi")]], "loop_last": True}, {"turns": ["x"]}]}
    (tmp_path / "s.json").write_text(json.dumps(data))
    loaded = load_scripts(tmp_path / "s.json")
    assert loaded[0].loop_last and loaded[0].turns[0].content == [edit_create("a.txt", "hi")]
    (tmp_path / "bad.yml").write_text("turns: [[{bsh: ls}]]")
    with pytest.raises(ConfigError, match=r"bad.yml: script 0: turns\[0\]"):
        load_script(tmp_path / "bad.yml")


def test_the_command_line_serves_script_files(tmp_path: Path) -> None:
    (tmp_path / "s.yml").write_text(SCRIPT_YAML)
    port = free_port()
    command = [sys.executable, "-m", "app.testing.anthropic_server", "--port", str(port), "--script", "s.yml"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"serving 1 scripts on http://127.0.0.1:{port}"
        client: Any = anthropic.Anthropic(api_key="k", base_url=f"http://127.0.0.1:{port}", max_retries=0)
        for _ in range(200):
            try:
                reply = client.messages.create(model=MODEL, max_tokens=10, messages=[USER])
                break
            except anthropic.APIConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail("the command-line server did not answer")
        assert reply.content[1].input == {"command": "pytest -q"}
    finally:
        process.terminate()
        process.wait(timeout=10)
