"""The toolbox as the model calls it: bash and the editor against a real workspace and shell, and server tools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.agent.loop import Agent, Budget
from app.agent.tools.server import server_tool_events
from app.agent.tools.toolbox import Toolbox
from app.core.ports import Hands
from app.models.anthropic import AnthropicModel
from app.models.scripts import load_scripts, play, web_fetch, web_search
from app.sandbox.local import LocalSandbox
from app.testing.anthropic_server import AnthropicState, Script, Turn, bash, create_app, text
from app.testing.serve import serve_in_thread


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "config").write_text("[core]\n")
    (repo / "src" / "pkg" / "deep").mkdir(parents=True)
    (repo / "src" / "pkg" / "deep" / "three.py").write_text("")
    (repo / "src" / "app.py").write_text("def main():\n    return 1\n\n\nprint(main())\n")
    (repo / ".env").write_text("HIDDEN=1\n")
    (repo / "README.md").write_text("hello\nhello\n")
    return repo


@pytest.fixture
async def shell(workspace: Path) -> AsyncIterator[Hands]:
    sh = await LocalSandbox().hands(workspace, {})
    yield sh
    await sh.close()


@pytest.fixture
def toolbox(workspace: Path, shell: Hands) -> Toolbox:
    return Toolbox(["bash", "edit", "web_fetch"], hands=shell, max_result_chars=400)


async def call(toolbox: Toolbox, name: str, **params: Any) -> tuple[str, bool]:
    out = await toolbox.execute({"type": "tool_use", "id": "toolu_1", "name": name, "input": params})
    assert out.result["tool_use_id"] == "toolu_1" and out.result["is_error"] == out.is_error
    return str(out.result["content"]), out.is_error


async def edit(toolbox: Toolbox, **params: Any) -> tuple[str, bool]:
    return await call(toolbox, "str_replace_based_edit_tool", **params)


def test_definitions_list_only_known_enabled_tools(toolbox: Toolbox, workspace: Path, shell: Hands) -> None:
    assert toolbox.definitions() == [
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 10},
    ]
    only_edit = Toolbox(["edit"], hands=shell, max_view_characters=500)
    assert only_edit.definitions() == [
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool", "max_characters": 500}
    ]


async def test_bash_runs_in_the_workspace_and_reports_exit_codes(toolbox: Toolbox, workspace: Path) -> None:
    assert await call(toolbox, "bash", command="cat README.md") == ("hello\nhello\n", False)
    assert await call(toolbox, "bash", command="echo oops; false") == ("oops\nexit code 1", False)
    await call(toolbox, "bash", command="cd src")
    assert await call(toolbox, "bash", restart=True) == (
        "The shell was restarted; the working directory and variables are reset.",
        False,
    )
    assert await call(toolbox, "bash", command="pwd") == (f"{workspace}\n", False)
    text, is_error = await call(toolbox, "bash")
    assert is_error and "command" in text


async def test_long_output_is_cut_for_the_model_but_kept_for_the_log(toolbox: Toolbox) -> None:
    out = await toolbox.execute({"id": "t", "name": "bash", "input": {"command": "seq 1 2000"}})
    assert len(out.output) > 8000 and out.output.endswith("2000\n")
    content = str(out.result["content"])
    assert len(content) < 600 and "characters cut" in content
    assert content.startswith("1\n2\n") and content.endswith("1999\n2000\n")


async def test_view_file_and_ranges(toolbox: Toolbox, workspace: Path) -> None:
    text, is_error = await edit(toolbox, command="view", path=f"{workspace}/src/app.py")
    assert not is_error
    assert text.splitlines()[1:3] == ["     1\tdef main():", "     2\t    return 1"]
    assert len(text.splitlines()) == 6
    text, _ = await edit(toolbox, command="view", path="src/app.py", view_range=[4, -1])
    assert text.splitlines()[1:] == ["     4\t", "     5\tprint(main())"]
    text, is_error = await edit(toolbox, command="view", path="src/app.py", view_range=[9, 10])
    assert is_error and "has 5 lines" in text


async def test_view_directory_two_levels_without_hidden(shell: Hands, workspace: Path) -> None:
    text, is_error = await edit(Toolbox(["edit"], hands=shell), command="view", path=str(workspace))
    assert not is_error
    listing = [line.replace(str(workspace), "/repo") for line in text.splitlines()[1:]]
    assert listing == ["/repo/README.md", "/repo/src/", "/repo/src/app.py", "/repo/src/pkg/"]


async def test_create_str_replace_insert(toolbox: Toolbox, workspace: Path) -> None:
    notes = f"{workspace}/new/notes.txt"
    text, is_error = await edit(toolbox, command="create", path=notes, file_text="one\nthree\n")
    assert (text, is_error) == (f"File created: {notes}", False)
    text, is_error = await edit(toolbox, command="str_replace", path="new/notes.txt", old_str="three", new_str="four")
    assert not is_error and "     2\tfour" in text
    _, is_error = await edit(toolbox, command="insert", path="new/notes.txt", insert_line=1, insert_text="two\nthree")
    assert not is_error
    _, is_error = await edit(toolbox, command="insert", path="new/notes.txt", insert_line=0, insert_text="zero")
    assert not is_error
    assert (workspace / "new" / "notes.txt").read_text() == "zero\none\ntwo\nthree\nfour\n"


async def test_editor_errors_go_back_to_the_model(toolbox: Toolbox) -> None:
    text, is_error = await edit(toolbox, command="str_replace", path="README.md", old_str="hello", new_str="bye")
    assert is_error and "Found 2 matches" in text
    text, is_error = await edit(toolbox, command="str_replace", path="README.md", old_str="absent", new_str="x")
    assert is_error and "No match found" in text
    text, is_error = await edit(toolbox, command="insert", path="README.md", insert_line=9, insert_text="x")
    assert is_error and "0 (top) to 2" in text
    text, is_error = await edit(toolbox, command="view", path="missing.py")
    assert is_error and "does not exist" in text
    text, is_error = await edit(toolbox, command="undo_edit", path="README.md")
    assert is_error and "unknown command 'undo_edit'" in text
    text, is_error = await call(toolbox, "web_fetch", url="https://example.com")
    assert is_error and "runs on Anthropic's side" in text
    text, is_error = await call(toolbox, "frobnicate", x=1)
    assert is_error and "not available" in text and "web_fetch" in text


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "/repo/../outside.txt", "link/x", ".git/config"])
async def test_paths_outside_the_workspace_or_into_git_are_refused(
    toolbox: Toolbox, workspace: Path, path: str
) -> None:
    path = path.replace("/repo", str(workspace))
    outside = workspace.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "x").write_text("secret")
    (workspace / "link").symlink_to(outside)
    for params in (
        {"command": "view", "path": path},
        {"command": "create", "path": path, "file_text": "pwned"},
        {"command": "str_replace", "path": path, "old_str": "secret", "new_str": "pwned"},
    ):
        text, is_error = await edit(toolbox, **params)
        assert is_error and ("outside the workspace" in text or "inside .git" in text)
    assert (outside / "x").read_text() == "secret"
    assert (workspace / ".git" / "config").read_text() == "[core]\n"
    assert not (workspace.parent / "outside.txt").exists()


def test_server_tools_are_offered_only_when_listed(workspace: Path, shell: Hands) -> None:
    assert Toolbox(["bash", "edit"], hands=shell).names == ["bash", "str_replace_based_edit_tool"]
    both = Toolbox(["web_fetch", "web_search"], hands=shell, server_tool_max_uses=3)
    assert both.definitions() == [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 3},
    ]


def test_server_tool_uses_in_a_turn_become_events() -> None:
    content = [
        text("Searching."),
        *web_search("bwrap seccomp", [("https://a.example/1", "One"), ("https://b.example/2", "Two")], id="srv_1"),
        {
            "type": "web_fetch_tool_result",
            "tool_use_id": "srv_2",
            "content": {"type": "x", "error_code": "url_not_allowed"},
        },
        bash("ls"),
    ]
    assert server_tool_events(content) == [
        ("server_tool.call", {"id": "srv_1", "name": "web_search", "input": {"query": "bwrap seccomp"}}),
        (
            "server_tool.result",
            {
                "tool_use_id": "srv_1",
                "type": "web_search_tool_result",
                "error": None,
                "urls": ["https://a.example/1", "https://b.example/2"],
            },
        ),
        (
            "server_tool.result",
            {"tool_use_id": "srv_2", "type": "web_fetch_tool_result", "error": "url_not_allowed", "urls": []},
        ),
    ]


async def test_server_tool_blocks_round_trip_through_the_sdk_and_the_test_server(workspace: Path, shell: Hands) -> None:
    state = AnthropicState()
    state.add_script(
        Script(
            [
                Turn(
                    [
                        text("Looking it up."),
                        *web_search("routines", [("https://docs.example/r", "Routines")]),
                        bash("true"),
                    ]
                ),
                Turn([*web_fetch("https://docs.example/r", "Routines run prompts."), text("Done.")]),
            ]
        )
    )
    events: list[tuple[str, Any]] = []

    class Sink:
        async def emit(self, type: str, data: Any) -> None:
            events.append((type, data))

    toolbox = Toolbox(["bash", "web_search", "web_fetch"], hands=shell)
    with serve_in_thread(create_app(state)) as served:
        async with AnthropicModel("test-key", served.url, max_retries=0) as model:
            agent = Agent(model, toolbox, Sink(), Budget("claude-sonnet-4-6", 4, 1))
            outcome = await agent.run([text("Research.")], "Go.")
    assert outcome.error is None and outcome.summary == "Done."
    sent = state.requests[0].body["tools"]
    assert [t["type"] for t in sent] == ["bash_20250124", "web_search_20250305", "web_fetch_20250910"]
    turns = [data["content"] for kind, data in events if kind == "model.turn"]
    found = [e for content in turns for e in server_tool_events(content)]
    assert [(kind, data.get("name") or data.get("urls")) for kind, data in found] == [
        ("server_tool.call", "web_search"),
        ("server_tool.result", ["https://docs.example/r"]),
        ("server_tool.call", "web_fetch"),
        ("server_tool.result", ["https://docs.example/r"]),
    ]
    echoed = state.requests[1].body["messages"][1]["content"]
    assert [b["type"] for b in echoed] == ["text", "server_tool_use", "web_search_tool_result", "tool_use"]
    assert echoed[2]["tool_use_id"] == echoed[1]["id"] and echoed[1]["id"].startswith("srvtoolu_")


def test_script_files_can_hold_memory_calls_and_server_tool_uses(tmp_path: Path) -> None:
    path = tmp_path / "session.yml"
    path.write_text(
        "turns:\n"
        "  - - {web_search: {query: q, results: [{url: 'https://a.example', title: A}]}}\n"
        "    - {memory: {command: view, path: /memories}}\n"
        "  - content: [{web_fetch: {url: 'https://a.example', text: page}}, {text: done}]\n"
    )
    (script,) = load_scripts(path)
    first = play(script.turns[0], iter(["toolu_1", "toolu_2"]).__next__)
    assert [b["type"] for b in first] == ["server_tool_use", "web_search_tool_result", "tool_use"]
    assert first[1]["tool_use_id"] == first[0]["id"] == "srvtoolu_1" and first[2]["id"] == "toolu_2"
    assert first[2]["input"] == {"command": "view", "path": "/memories"}
    assert script.turns[0].final_stop_reason == "tool_use" and script.turns[1].final_stop_reason == "end_turn"
    assert script.turns[1].content[1]["content"]["content"]["source"]["data"] == "page"
