"""The first model request goes out while the sandbox starts; tool calls wait for it; a failed start fails the run.

A run is executed here by the runner itself (real store, forge, mirrors, model client and sandbox, built
by services.py against the test servers), with the sandbox's start held until the model has been asked:
had the request waited for the sandbox, the run could not end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from app.core.domain import JSON, Routine
from app.core.errors import SandboxError
from app.core.ports import Boundary, Emit, Hands, ModelClient, ModelResponse, Place, Redacts, Sandbox
from app.run.context import Sandboxes
from app.run.runner import execute
from app.run.starting import StartingHands
from app.services import build
from app.testing.anthropic_server import Script, Turn, bash, text
from app.testing.stack import Stack
from tests.support.stacks import api_routines

HANG_S = 60  # only a guard against a hang, never a speed limit


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    with api_routines(tmp_path, redis_url, ["look", "talk"]) as s:
        yield s


class AskedModel:
    """The real model client, noting that it was asked."""

    def __init__(self, model: ModelClient) -> None:
        self.model = model
        self.asked = asyncio.Event()

    async def create(
        self, *, model: str, system: list[JSON], messages: list[JSON], tools: list[JSON], max_tokens: int
    ) -> ModelResponse:
        self.asked.set()
        return await self.model.create(
            model=model, system=system, messages=messages, tools=tools, max_tokens=max_tokens
        )


@dataclass
class HeldSandbox:
    """The real sandbox, whose hands start only once `go` is set; with `broken`, they fail to start then."""

    sandbox: Sandbox
    go: asyncio.Event
    broken: bool = False
    name: str = "held"

    async def hands(self, workdir: Path, env: dict[str, str]) -> Hands:
        await self.go.wait()
        if self.broken:
            raise SandboxError("the sandbox did not start: held broken by the test")
        return await self.sandbox.hands(workdir, env)


@dataclass
class HeldBoundary:
    boundary: Boundary
    sandbox: Sandbox
    env: dict[str, str] = field(default_factory=dict)
    denied: list[JSON] = field(default_factory=list)

    async def close(self) -> None:
        await self.boundary.close()


@dataclass
class HeldSandboxes:
    sandboxes: Sandboxes
    go: asyncio.Event
    broken: bool = False

    async def open(
        self, run_id: str, routine: Routine, run_dir: Path, emit: Emit, redactor: Redacts, place: Place | None = None
    ) -> Boundary:
        boundary = await self.sandboxes.open(run_id, routine, run_dir, emit, redactor, place)
        return HeldBoundary(
            boundary, HeldSandbox(boundary.sandbox, self.go, self.broken), boundary.env, boundary.denied
        )

    async def unpack(self, folder: Path) -> int | None:
        return await self.sandboxes.unpack(folder)


async def run_held(stack: Stack, routine: str, *, broken: bool = False) -> tuple[str, str, str | None]:
    """Fire `routine` and execute its run with the sandbox held until the model is asked; (id, state, error)."""
    run_id = stack.fire(routine).json()["run_id"]
    services = await build(stack.settings)
    try:
        deps = await services.runner_deps()
        model = AskedModel(deps.model)
        held = HeldSandboxes(deps.sandboxes, model.asked, broken)
        async with asyncio.timeout(HANG_S):
            run = await execute(run_id, replace(deps, model=model, sandboxes=held))
        return run_id, run.state.value, run.error
    finally:
        await services.close()


async def test_the_model_is_asked_before_the_sandbox_is_up_and_tools_wait_for_it(stack: Stack) -> None:
    stack.anthropic.add_script(
        Script(
            match="[script:look]",
            turns=[Turn([bash("echo hi > hello.txt && cat hello.txt")]), Turn([text("Said hi.")])],
        )
    )

    run_id, state, error = await run_held(stack, "look")

    assert (state, error) == ("succeeded", None)
    tool_results = [e["data"] for e in stack.events(run_id) if e["type"] == "tool.result"]
    assert [r["output"] for r in tool_results] == ["hi\n"]


async def test_a_sandbox_that_fails_to_start_fails_the_run_even_when_no_tool_was_called(stack: Stack) -> None:
    stack.anthropic.add_script(Script(match="[script:talk]", turns=[Turn([text("Nothing to do.")])]))

    _run_id, state, error = await run_held(stack, "talk", broken=True)

    assert state == "failed" and "held broken by the test" in (error or "")


async def test_calls_on_starting_hands_wait_for_the_start_and_share_its_failure(tmp_path: Path) -> None:
    go = asyncio.Event()

    async def start() -> Hands:
        await go.wait()
        raise SandboxError("no sandbox today")

    starting = asyncio.create_task(start())
    hands = StartingHands(tmp_path, lambda: asyncio.shield(starting))
    waiting = asyncio.create_task(hands.run("true", 5))
    await asyncio.sleep(0)
    assert not waiting.done() and hands.workdir == tmp_path
    waiting.cancel()  # a caller that gives up leaves the start alone
    await asyncio.wait([waiting])
    assert not starting.done()
    go.set()
    for call in (hands.run("true", 5), hands.names(), hands.edit({"command": "view", "path": "x"})):
        with pytest.raises(SandboxError, match="no sandbox today"):
            await call
