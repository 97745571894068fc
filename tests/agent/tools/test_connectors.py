"""Connectors: a routine's MCP servers, opened with vault secrets, called by the model through the agent loop."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis import asyncio as aioredis

from app.agent.loop import Agent, Budget
from app.agent.tools.connectors import MAX_REOPENS, ConnectorError, open_connectors
from app.agent.tools.toolbox import Toolbox
from app.core.domain import Connector
from app.core.ports import Hands
from app.core.redact import Redactor
from app.models.scripted import ScriptedModel
from app.models.scripts import Script, Turn, text, tool_use
from app.sandbox.local import LocalSandbox
from app.store.vault import Vault
from app.testing.mcp_server import McpState, create_app
from app.testing.serve import Served, free_port, serve_in_thread
from tests.support.events import Recorder

TOKEN = "lin_api_connector-token-0123456789"
KEY = b"k" * 32




@pytest.fixture
def state() -> McpState:
    return McpState(tokens={TOKEN})


@pytest.fixture
def server(state: McpState) -> Iterator[Served]:
    with serve_in_thread(create_app(state)) as served:
        yield served


@pytest.fixture
async def vault(aredis: aioredis.Redis) -> Vault:
    vault = Vault(aredis, KEY)
    await vault.set("TRACKER_TOKEN", TOKEN, ["127.0.0.1"])
    await vault.set("OTHER_TOKEN", "lin_api_other-token-0123456789", ["mcp.linear.app"])
    return vault


@pytest.fixture
async def shell(tmp_path: Path) -> AsyncIterator[Hands]:
    sh = await LocalSandbox().hands(tmp_path, {})
    yield sh
    await sh.close()


def tracker(server: Served, secret: str | None = "TRACKER_TOKEN") -> Connector:
    return Connector(name="tracker", url=f"{server.url}/mcp", secret=secret)


async def test_the_model_calls_a_connector_tool_and_every_step_is_an_event(
    server: Served, state: McpState, vault: Vault, shell: Hands, tmp_path: Path
) -> None:
    script = Script(
        [
            Turn([text("Looking for crashes."), tool_use("tracker__search_issues", {"query": "crash"})]),
            Turn([tool_use("tracker__get_issue", {"id": "ENG-404"})]),
            Turn([text("ENG-1 is the crash.")]),
        ]
    )
    model, events, redactor = ScriptedModel(script), Recorder(), Redactor()
    async with open_connectors([tracker(server)], vault, redactor=redactor, emit=events.emit) as connectors:
        toolbox = Toolbox(["bash"], hands=shell, connectors=connectors)
        agent = Agent(model, toolbox, events, Budget("claude-sonnet-4-6", 5, 1))
        outcome = await agent.run([text("Find the crash.")], "Go.")

    assert outcome.error is None and outcome.summary == "ENG-1 is the crash."
    assert events.of("connector.open") == [{"connector": "tracker", "tools": ["search_issues", "get_issue"]}]
    tools = {t["name"]: t for t in model.requests[0]["tools"]}
    assert set(tools) == {"bash", "tracker__search_issues", "tracker__get_issue"}
    assert tools["tracker__get_issue"]["description"].startswith("[connector tracker] One issue by its id")
    assert tools["tracker__search_issues"]["input_schema"]["required"] == ["query"]
    assert [c["name"] for c in events.of("tool.call")] == ["tracker__search_issues", "tracker__get_issue"]
    found, missing = events.of("tool.result")
    assert not found["is_error"] and '"id": "ENG-1"' in found["output"]
    assert found["output"].startswith('<untrusted-data source="connector:tracker">')
    assert missing["is_error"] and "no issue 'ENG-404'" in missing["output"]
    assert state.calls == [("search_issues", {"query": "crash"}), ("get_issue", {"id": "ENG-404"})]
    assert set(state.tokens_seen) == {TOKEN}
    assert redactor.text(f"token {TOKEN}") == "token [TRACKER_TOKEN]"


GET_ISSUE = {"type": "tool_use", "id": "toolu_1", "name": "tracker__get_issue", "input": {"id": "ENG-2"}}


@asynccontextmanager
async def tracker_toolbox(
    state: McpState, vault: Vault, shell: Hands, tmp_path: Path
) -> AsyncIterator[tuple[Served, Toolbox]]:
    """A toolbox with the tracker connector open on a server the test may stop (and start again)."""
    served = serve_in_thread(create_app(state))
    try:
        async with open_connectors([tracker(served)], vault, call_timeout_s=5) as connectors:
            yield served, Toolbox([], hands=shell, connectors=connectors)
    finally:
        served.stop()


async def test_a_connector_that_dies_mid_run_gives_tool_errors_not_a_failed_run(
    state: McpState, vault: Vault, shell: Hands, tmp_path: Path
) -> None:
    async with tracker_toolbox(state, vault, shell, tmp_path) as (served, toolbox):
        call = GET_ISSUE
        first = await toolbox.execute(call)
        assert not first.is_error and first.connector == "tracker"
        assert json.loads(first.output.splitlines()[1])["title"] == "Slow start with many routines"
        served.stop()
        second = await toolbox.execute(call)
        third = await toolbox.execute(call)  # the session may still be ending: refused as "unavailable"
        fourth = await toolbox.execute(call)  # it has ended: opening it again fails, the server is down
        with serve_in_thread(create_app(state), port=served.port):  # the server is back (restarted, redeployed)
            fifth = await toolbox.execute(call)
        after = await toolbox.execute({"type": "tool_use", "id": "t", "name": "nope", "input": {}})
    assert second.is_error and "tracker" in second.output
    assert third.is_error and "tracker" in third.output
    assert fourth.is_error and "went away" in fourth.output and "could not be opened again" in fourth.output
    assert not fifth.is_error and "Slow start with many routines" in fifth.output, "the next call opens it again"
    assert after.is_error and "not available" in after.output


async def test_a_connector_is_opened_again_at_most_max_reopens_times(
    state: McpState, vault: Vault, shell: Hands, tmp_path: Path
) -> None:
    async with tracker_toolbox(state, vault, shell, tmp_path) as (served, toolbox):
        served.stop()
        outputs = [(await toolbox.execute(GET_ISSUE)).output for _ in range(MAX_REOPENS + 3)]
    reopened = [o for o in outputs if "could not be opened again" in o]
    assert len(reopened) == MAX_REOPENS, outputs
    assert "unavailable for the rest of this run" in outputs[-1]


async def test_bad_arguments_come_back_as_tool_errors(
    server: Served, vault: Vault, shell: Hands, tmp_path: Path
) -> None:
    async with open_connectors([tracker(server)], vault) as connectors:
        toolbox = Toolbox([], hands=shell, connectors=connectors)
        out = await toolbox.execute({"id": "t", "name": "tracker__search_issues", "input": {"q": 1}})
    assert out.is_error and "query" in out.output


async def test_a_refused_token_fails_opening_without_showing_it(server: Served, state: McpState, vault: Vault) -> None:
    state.tokens = {"something-else-entirely"}
    with pytest.raises(ConnectorError) as caught:
        async with open_connectors([tracker(server)], vault):
            pass
    assert "refused the secret TRACKER_TOKEN (401)" in str(caught.value)
    assert TOKEN not in str(caught.value)


async def test_a_secret_goes_only_to_its_own_domains(server: Served, state: McpState, vault: Vault) -> None:
    with pytest.raises(ConnectorError, match=r"OTHER_TOKEN may only be sent to mcp.linear.app, not 127.0.0.1"):
        async with open_connectors([tracker(server, "OTHER_TOKEN")], vault):
            pass
    with pytest.raises(ConnectorError, match="MISSING_TOKEN"):
        async with open_connectors([tracker(server, "MISSING_TOKEN")], vault):
            pass
    with pytest.raises(ConnectorError, match="no vault is configured"):
        async with open_connectors([tracker(server)], None):
            pass
    assert state.tokens_seen == []


async def test_an_unreachable_connector_fails_opening_with_its_name() -> None:
    dead = Connector(name="gone", url=f"http://127.0.0.1:{free_port()}/mcp")
    with pytest.raises(ConnectorError, match=r"connector gone: ConnectError"):
        async with open_connectors([dead], None):
            pass


async def test_tool_names_are_prefixed_and_made_valid(server: Served, state: McpState) -> None:
    state.tokens = None
    odd = Connector(name="my.tracker", url=f"{server.url}/mcp")
    async with open_connectors([odd, Connector(name="my_tracker", url=f"{server.url}/mcp")], None) as connectors:
        names = [d["name"] for d in connectors.definitions()]
    assert names == [
        "my_tracker__search_issues",
        "my_tracker__get_issue",
        "my_tracker__search_issues_2",
        "my_tracker__get_issue_2",
    ]
