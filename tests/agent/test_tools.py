"""The bash and editor tools, as the model calls them, against a real workspace and a real shell."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.agent.tools import Toolbox
from app.sandbox.local import LocalSandbox, LocalShell


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
async def shell(workspace: Path) -> AsyncIterator[LocalShell]:
    sh = await LocalSandbox().shell(workspace, {})
    yield sh
    await sh.close()


@pytest.fixture
def toolbox(workspace: Path, shell: LocalShell) -> Toolbox:
    return Toolbox(["bash", "edit", "web_fetch"], shell=shell, workspace=workspace, root="/repo", max_result_chars=400)


async def call(toolbox: Toolbox, name: str, **params: Any) -> tuple[str, bool]:
    out = await toolbox.execute({"type": "tool_use", "id": "toolu_1", "name": name, "input": params})
    assert out.result["tool_use_id"] == "toolu_1" and out.result["is_error"] == out.is_error
    return str(out.result["content"]), out.is_error


async def edit(toolbox: Toolbox, **params: Any) -> tuple[str, bool]:
    return await call(toolbox, "str_replace_based_edit_tool", **params)


def test_definitions_list_only_known_enabled_tools(toolbox: Toolbox, workspace: Path, shell: LocalShell) -> None:
    assert toolbox.definitions() == [
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    ]
    only_edit = Toolbox(["edit"], shell=shell, workspace=workspace, max_view_characters=500)
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


async def test_view_file_and_ranges(toolbox: Toolbox) -> None:
    text, is_error = await edit(toolbox, command="view", path="/repo/src/app.py")
    assert not is_error
    assert text.splitlines()[1:3] == ["     1\tdef main():", "     2\t    return 1"]
    assert len(text.splitlines()) == 6
    text, _ = await edit(toolbox, command="view", path="src/app.py", view_range=[4, -1])
    assert text.splitlines()[1:] == ["     4\t", "     5\tprint(main())"]
    text, is_error = await edit(toolbox, command="view", path="src/app.py", view_range=[9, 10])
    assert is_error and "has 5 lines" in text


async def test_view_directory_two_levels_without_hidden(toolbox: Toolbox) -> None:
    text, is_error = await edit(toolbox, command="view", path="/repo")
    assert not is_error
    listing = text.splitlines()[1:]
    assert listing == ["/repo/README.md", "/repo/src/", "/repo/src/app.py", "/repo/src/pkg/"]


async def test_create_str_replace_insert(toolbox: Toolbox, workspace: Path) -> None:
    text, is_error = await edit(toolbox, command="create", path="/repo/new/notes.txt", file_text="one\nthree\n")
    assert (text, is_error) == ("File created: /repo/new/notes.txt", False)
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
    assert is_error and "not available" in text


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "/repo/../outside.txt", "link/x", ".git/config"])
async def test_paths_outside_the_workspace_or_into_git_are_refused(
    toolbox: Toolbox, workspace: Path, path: str
) -> None:
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
