"""Runs that are starting go first: a run's later steps wait for other runs' starts, for a bounded time.

The runner tests execute two runs side by side with the real runner (real store, forge, mirrors, model
client and bubblewrap, built by services.py against the test servers), one of them held before its first
model request, and watch when the other's sandbox opens.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from app.core.domain import JSON, Routine
from app.core.ports import (
    Boundary,
    Checkout,
    Credentials,
    Emit,
    Forge,
    ForgeOutputs,
    ModelClient,
    ModelResponse,
    Place,
    Redacts,
    Workspaces,
)
from app.run.context import CodeHosts, RunnerDeps, Sandboxes
from app.run.runner import execute
from app.run.starts import Starts
from app.services import build
from app.testing.anthropic_server import Script, Turn, bash, text
from app.testing.stack import Stack
from tests.run.test_starting import AskedModel
from tests.support.stacks import api_routines

HANG_S = 60  # only a guard against a hang, never a speed limit


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_step_waits_for_the_other_starts_under_way_then_goes() -> None:
    starts = Starts()
    mine, other, third = starts.begin(), starts.begin(), starts.begin()
    mine.done()
    waiting = asyncio.create_task(starts.yield_to_others(mine))
    await settle()
    assert not waiting.done()
    other.saw("model.request", {})  # a request handed to the client is not yet one the model has
    await settle()
    assert not waiting.done()
    other.saw("model.turn", {})
    await settle()
    assert not waiting.done()
    third.done()
    await asyncio.wait_for(waiting, HANG_S)


async def test_a_run_does_not_wait_for_its_own_start_nor_for_starts_that_began_after_it_asked() -> None:
    starts = Starts(clock=lambda: 0.0)  # no start ever grows old here: only the rules end a wait
    own = starts.begin()
    await asyncio.wait_for(starts.yield_to_others(own), HANG_S)
    waiting = asyncio.create_task(starts.yield_to_others(own))
    await asyncio.sleep(0)  # it asked
    later = starts.begin()
    await asyncio.wait_for(waiting, HANG_S)
    assert not later.over.done()


async def test_a_start_holds_others_back_for_priority_s_at_most() -> None:
    now = [100.0]
    starts = Starts(clock=lambda: now[0], priority_s=2.0)
    stuck = starts.begin()
    now[0] = 102.5  # the stuck start began 2.5 s ago: it holds no one any more
    await asyncio.wait_for(starts.yield_to_others(), HANG_S)
    assert not stuck.over.done()


# ---------------------------------------------------------------- two runs through the runner


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    with api_routines(tmp_path, redis_url, ["going", "starting"]) as s:
        going = [Turn([bash("echo going > going.txt")]), Turn([text("Went.")])]
        s.anthropic.add_script(Script(match="[script:going]", turns=going))
        s.anthropic.add_script(Script(match="[script:starting]", turns=[Turn([text("Nothing to change.")])]))
        yield s


@dataclass
class HeldWorkspaces:
    """The real mirrors, whose `ensure` says it was reached and then waits for `go`."""

    workspaces: Workspaces
    reached: asyncio.Event
    go: asyncio.Event

    async def ensure(self, url: str, creds: Credentials | None, *, since: float | None = None) -> Path:
        self.reached.set()
        await self.go.wait()
        return await self.workspaces.ensure(url, creds, since=since)

    async def checkout(self, mirror: Path, base: str, dest: Path) -> Checkout:
        return await self.workspaces.checkout(mirror, base, dest)

    async def fetch_pull(self, mirror: Path, url: str, creds: Credentials | None, number: int, commit: str) -> None:
        await self.workspaces.fetch_pull(mirror, url, creds, number, commit)

    def discard(self, dest: Path) -> None:
        self.workspaces.discard(dest)


@dataclass
class HeldCode:
    code: CodeHosts
    held: HeldWorkspaces

    @property
    def workspaces(self) -> Workspaces:
        return self.held

    def forge_for(self, repo: str) -> Forge:
        return self.code.forge_for(repo)

    def outputs_for(self, forge: Forge) -> ForgeOutputs | None:
        return self.code.outputs_for(forge)


class NotedModel(AskedModel):
    """The real model client, noting in `order` that `name` asked it."""

    def __init__(self, model: ModelClient, order: list[str], name: str) -> None:
        super().__init__(model)
        self.order, self.name = order, name

    async def create(
        self, *, model: str, system: list[JSON], messages: list[JSON], tools: list[JSON], max_tokens: int
    ) -> ModelResponse:
        self.order.append(f"{self.name} asked")
        return await super().create(model=model, system=system, messages=messages, tools=tools, max_tokens=max_tokens)


@dataclass
class NotedSandboxes:
    sandboxes: Sandboxes
    order: list[str]
    name: str

    async def open(
        self, run_id: str, routine: Routine, run_dir: Path, emit: Emit, redactor: Redacts, place: Place | None = None
    ) -> Boundary:
        self.order.append(f"{self.name} sandbox")
        return await self.sandboxes.open(run_id, routine, run_dir, emit, redactor, place)

    async def unpack(self, folder: Path) -> int | None:
        return await self.sandboxes.unpack(folder)


def noted(deps: RunnerDeps, model: NotedModel, starts: Starts) -> RunnerDeps:
    return replace(deps, model=model, sandboxes=NotedSandboxes(deps.sandboxes, model.order, model.name), starts=starts)


async def two_runs(stack: Stack, starts: Starts, *, release_after_going_asked: bool) -> list[str]:
    """Execute `starting` (held before its first request) and `going` side by side; the order of what
    each did. `starting` goes on once `going` has asked the model (or at once, for the bounded case,
    after `going` has finished)."""
    order: list[str] = []
    starting_id = stack.fire("starting").json()["run_id"]
    going_id = stack.fire("going").json()["run_id"]
    services = await build(stack.settings)
    try:
        deps = await services.runner_deps()
        reached, go = asyncio.Event(), asyncio.Event()
        held = HeldCode(deps.code, HeldWorkspaces(deps.code.workspaces, reached, go))
        async with asyncio.timeout(HANG_S):
            starting_deps = noted(deps, NotedModel(deps.model, order, "starting"), starts)
            starting = asyncio.create_task(execute(starting_id, replace(starting_deps, code=held)))
            await reached.wait()
            going_model = NotedModel(deps.model, order, "going")
            going = asyncio.create_task(execute(going_id, noted(deps, going_model, starts)))
            if release_after_going_asked:
                await going_model.asked.wait()
                await settle()
                go.set()
            else:
                await going
                go.set()
            runs = await asyncio.gather(starting, going)
        assert [run.state.value for run in runs] == ["no_changes", "succeeded"], [run.error for run in runs]
        return order
    finally:
        await services.close()


async def test_a_run_opens_its_sandbox_only_once_another_runs_start_is_over(stack: Stack) -> None:
    starts = Starts()
    order = await two_runs(stack, starts, release_after_going_asked=True)

    # going asked the model while its sandbox waited for starting's start, over when starting asked too
    assert order.index("going asked") < order.index("starting asked") < order.index("going sandbox"), order
    assert not starts.pending, "every start ended with its run"


async def test_a_start_that_is_stuck_holds_no_one_back_after_priority_s(stack: Stack) -> None:
    readings = itertools.count(step=10.0)  # every reading of this clock is ten seconds after the last
    starts = Starts(clock=lambda: next(readings))

    order = await two_runs(stack, starts, release_after_going_asked=False)

    # going ran to its end while starting was still held before its first request
    assert order.index("going sandbox") < order.index("starting asked"), order
