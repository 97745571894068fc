"""End to end: a routine with an MCP connector and memory; the next run sees the note the last one kept."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import asyncio as aioredis

from app.models.scripts import edit_create, memory
from app.store.vault import Vault, secret_key
from app.testing.anthropic_server import Script, Turn, text, tool_use
from app.testing.mcp_server import McpState, create_app
from app.testing.serve import serve_in_thread
from app.testing.stack import Stack, running_stack

KEY = "test-secret-key-0123456789abcdefghijklmnop"
TOKEN = "lin_api_e2e-connector-token-0123456789"


@pytest.fixture
def mcp() -> Iterator[tuple[McpState, str]]:
    state = McpState(tokens={TOKEN})
    with serve_in_thread(create_app(state)) as served:
        yield state, f"{served.url}/mcp"


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, mcp: tuple[McpState, str]) -> Iterator[Stack]:
    routines = tmp_path / "routines"
    routines.mkdir()
    (routines / "triage.md").write_text(
        "---\nname: triage\nrepo: acme/svc\non:\n  api: true\ntools: [bash, edit, memory]\n"
        f'connectors: {{tracker: {{url: "{mcp[1]}", secret: TRACKER_TOKEN}}}}\n---\nTriage the crash. [script:triage]\n'
    )
    source = tmp_path / "src"
    source.mkdir()
    (source / "README.md").write_text("svc\n")
    with running_stack(tmp_path, redis_url, routines_dir=routines, secret_key=KEY) as s:
        s.github.add_repo("acme/svc", s.installation, source_dir=source)
        yield s


async def store_secret(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    await Vault(client, secret_key(KEY)).set("TRACKER_TOKEN", TOKEN, ["127.0.0.1"])
    await client.aclose()


def test_a_run_calls_its_connector_and_the_next_run_sees_its_memory(stack: Stack, mcp: tuple[McpState, str]) -> None:
    asyncio.run(store_secret(stack.settings.redis_url or ""))
    stack.anthropic.add_script(
        Script(
            match="[script:triage]",
            turns=[
                Turn([memory("view", path="/memories")]),
                Turn([tool_use("tracker__search_issues", {"query": "crash"})]),
                Turn([memory("create", path="/memories/seen.md", file_text="ENG-1\n")]),
                Turn([edit_create("TRIAGE.md", "ENG-1: empty config crashes\n")]),
                Turn([text("Triage ENG-1")]),
            ],
        )
    )
    first = stack.wait(stack.fire("triage").json()["run_id"])
    assert first["state"] == "succeeded", first["error"]
    events = stack.events(first["id"])
    kinds = [e["type"] for e in events]
    assert "connector.open" in kinds and "memory.restored" in kinds
    results = {e["data"]["name"]: e["data"] for e in events if e["type"] == "tool.result"}
    assert '"ENG-1"' in results["tracker__search_issues"]["output"]
    assert results["tracker__search_issues"]["connector"] == "tracker" and "connector" not in results["memory"]
    assert TOKEN not in str(events)
    assert mcp[0].calls == [("search_issues", {"query": "crash"})]

    second = stack.wait(stack.fire("triage").json()["run_id"])
    events = stack.events(second["id"])
    restored = next(e["data"] for e in events if e["type"] == "memory.restored")
    assert restored == {"files": 1, "bytes": 6, "paths": ["seen.md"]}
    view = next(e["data"] for e in events if e["type"] == "tool.result" and e["data"]["name"] == "memory")
    assert "seen.md" in view["output"]
