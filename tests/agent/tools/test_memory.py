"""Memory between runs: the memory tool over a run's /memories folder, kept per routine in Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis import asyncio as aioredis

from app.agent.loop import Agent, Budget
from app.agent.tools.memory import Memory, MemoryLimits
from app.agent.tools.toolbox import Toolbox
from app.core.domain import JSON
from app.core.ports import Hands
from app.models.scripted import ScriptedModel
from app.models.scripts import Script, Turn, text, tool_use
from app.sandbox.local import LocalSandbox
from app.store.memory import RedisMemoryStore
from tests.support.events import Recorder

ROUTINE = "weekly-findings"


@pytest.fixture
def store(aredis: aioredis.Redis) -> RedisMemoryStore:
    return RedisMemoryStore(aredis)


@pytest.fixture
async def shell(tmp_path: Path) -> AsyncIterator[Hands]:
    sh = await LocalSandbox().hands(tmp_path, {})
    yield sh
    await sh.close()


async def memory_call(toolbox: Toolbox, **params: Any) -> tuple[str, bool]:
    out = await toolbox.execute({"type": "tool_use", "id": "toolu_1", "name": "memory", "input": params})
    return str(out.result["content"]), out.is_error


async def run_toolbox(store: RedisMemoryStore, run_dir: Path, shell: Hands, **limits: int) -> Toolbox:
    memory = await Memory.restore(store, ROUTINE, run_dir / "memories", MemoryLimits(**limits))
    return Toolbox(["memory"], hands=shell, memory=memory)


async def test_the_store_keeps_one_folder_per_routine(store: RedisMemoryStore) -> None:
    assert await store.load(ROUTINE) == {}
    await store.save(ROUTINE, {"a.md": b"one", "dir/b.md": b"two"})
    await store.save("other", {"x": b"y"})
    assert await store.load(ROUTINE) == {"a.md": b"one", "dir/b.md": b"two"}
    await store.save(ROUTINE, {"c.md": b"three"})
    assert await store.load(ROUTINE) == {"c.md": b"three"}
    await store.save(ROUTINE, {})
    assert await store.load(ROUTINE) == {} and await store.load("other") == {"x": b"y"}


async def test_every_command_works_and_each_change_is_saved(
    store: RedisMemoryStore, shell: Hands, tmp_path: Path
) -> None:
    toolbox = await run_toolbox(store, tmp_path / "run1", shell)
    assert toolbox.definitions() == [{"type": "memory_20250818", "name": "memory"}]
    assert await memory_call(toolbox, command="view", path="/memories") == (
        "Here are the files and directories up to 2 levels deep in /memories, excluding hidden items:\n(empty)",
        False,
    )
    text_, is_error = await memory_call(toolbox, command="create", path="/memories/findings.md", file_text="- a\n")
    assert (text_, is_error) == ("File created: /memories/findings.md", False)
    assert await store.load(ROUTINE) == {"findings.md": b"- a\n"}
    _, is_error = await memory_call(
        toolbox, command="str_replace", path="/memories/findings.md", old_str="a", new_str="b"
    )
    _, is_error2 = await memory_call(
        toolbox, command="insert", path="/memories/findings.md", insert_line=1, insert_text="- c"
    )
    assert not is_error and not is_error2
    assert await store.load(ROUTINE) == {"findings.md": b"- b\n- c\n"}
    viewed, _ = await memory_call(toolbox, command="view", path="/memories/findings.md")
    assert viewed.endswith("     1\t- b\n     2\t- c")
    renamed = await memory_call(
        toolbox, command="rename", old_path="/memories/findings.md", new_path="/memories/w/1.md"
    )
    assert renamed == ("Renamed /memories/findings.md to /memories/w/1.md", False)
    assert await store.load(ROUTINE) == {"w/1.md": b"- b\n- c\n"}
    assert await memory_call(toolbox, command="delete", path="/memories/w") == ("Deleted /memories/w", False)
    assert await store.load(ROUTINE) == {}


async def test_the_next_run_of_the_routine_sees_what_the_last_one_kept(
    store: RedisMemoryStore, shell: Hands, tmp_path: Path
) -> None:
    first = Script(
        [
            Turn([tool_use("memory", {"command": "create", "path": "/memories/seen.md", "file_text": "ENG-1\n"})]),
            Turn([text("Noted.")]),
        ]
    )
    second = Script([Turn([tool_use("memory", {"command": "view", "path": "/memories/seen.md"})]), Turn([text("ok")])])
    outputs: list[str] = []
    for n, script in enumerate((first, second)):
        toolbox = await run_toolbox(store, tmp_path / f"run{n}", shell)
        events = Recorder()
        agent = Agent(ScriptedModel(script), toolbox, events, Budget("m", 4, 1))
        outcome = await agent.run([text("Keep notes.")], "Go.")
        assert outcome.error is None
        outputs += [d["output"] for t, d in events.events if t == "tool.result"]
    assert outputs[1] == "Here's the result of running `cat -n` on /memories/seen.md:\n     1\tENG-1"


async def test_the_folder_is_capped_and_an_over_limit_change_is_undone(
    store: RedisMemoryStore, shell: Hands, tmp_path: Path
) -> None:
    toolbox = await run_toolbox(store, tmp_path / "run", shell, max_bytes=100, max_files=2)
    await memory_call(toolbox, command="create", path="/memories/a.md", file_text="x" * 60)
    message, is_error = await memory_call(toolbox, command="create", path="/memories/b.md", file_text="y" * 60)
    assert is_error and "would hold 2 files and 120 bytes, over its limit of 2 files and 100 bytes" in message
    assert "Delete or shorten files" in message
    message, is_error = await memory_call(toolbox, command="create", path="/memories/huge.md", file_text="z" * 101)
    assert is_error and "larger than the whole memory limit" in message
    await memory_call(toolbox, command="create", path="/memories/b.md", file_text="y")
    message, is_error = await memory_call(toolbox, command="create", path="/memories/c.md", file_text="z")
    assert is_error and "3 files" in message
    assert not (tmp_path / "run" / "memories" / "c.md").exists()
    assert await store.load(ROUTINE) == {"a.md": b"x" * 60, "b.md": b"y"}


@pytest.mark.parametrize(
    "params",
    [
        {"command": "view", "path": "/etc"},
        {"command": "create", "path": "notes.md", "file_text": "x"},
        {"command": "create", "path": "/memories/../escape.md", "file_text": "x"},
        {"command": "create", "path": "/memories/link/x.md", "file_text": "x"},
        {"command": "delete", "path": "/memories"},
        {"command": "rename", "old_path": "/memories/a.md", "new_path": "/tmp/a.md"},
        {"command": "undo", "path": "/memories/a.md"},
    ],
)
async def test_paths_stay_inside_the_memory_folder(
    store: RedisMemoryStore, shell: Hands, tmp_path: Path, params: JSON
) -> None:
    (tmp_path / "outside").mkdir()
    toolbox = await run_toolbox(store, tmp_path / "run", shell)
    (tmp_path / "run" / "memories" / "link").symlink_to(tmp_path / "outside")
    await memory_call(toolbox, command="create", path="/memories/a.md", file_text="keep")
    message, is_error = await memory_call(toolbox, **params)
    assert is_error, message
    assert not (tmp_path / "run" / "escape.md").exists() and list((tmp_path / "outside").iterdir()) == []
    assert (tmp_path / "run" / "memories" / "a.md").read_text() == "keep"


async def test_restore_skips_stored_paths_that_would_escape(
    store: RedisMemoryStore, shell: Hands, tmp_path: Path
) -> None:
    await store.save(ROUTINE, {"../escape.md": b"x", "ok/note.md": b"fine"})
    memory = await Memory.restore(store, ROUTINE, tmp_path / "run" / "memories")
    assert memory.files() == {"ok/note.md": b"fine"} and not (tmp_path / "run" / "escape.md").exists()
    assert memory.stats() == {"files": 1, "bytes": 4, "paths": ["ok/note.md"]}


async def test_memory_is_offered_only_when_the_routine_lists_it(shell: Hands, tmp_path: Path) -> None:
    memory = Memory(tmp_path / "memories", routine=ROUTINE)
    assert Toolbox(["bash"], hands=shell, memory=memory).names == ["bash"]
    assert Toolbox(["memory"], hands=shell).names == []
