"""One run, end to end, as named phases: resolve → token → workspace → agent → deliver → record."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from app.agent.loop import Agent, AgentOutcome, Budget, Hooks
from app.agent.prompts import build_first_message, build_system, fence
from app.agent.tools.connectors import open_connectors
from app.agent.tools.memory import Memory
from app.agent.tools.toolbox import Toolbox
from app.core.domain import JSON, Event, Routine, Run, RunState
from app.core.errors import ConfigError, RoutinesError, WorkspaceError
from app.core.ports import MODEL_ANSWERING, Boundary, Hands
from app.run import environment
from app.run.context import RunContext, RunEvents, RunnerDeps
from app.run.finish import deliver_and_record
from app.run.meter import RunMeter
from app.run.outputs import review_context
from app.run.resume import INTERRUPTED, rebuild, restart_note
from app.run.starting import StartingHands

log = logging.getLogger(__name__)

# Bytecode caches would land in the PR of a repo without a .gitignore, and a same-second,
# same-size edit would run the stale .pyc.
SANDBOX_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}
MAX_CHECKPOINT_PATCH_CHARS = 8 * 1024 * 1024  # the event log is no place for a gigabyte of diff


async def execute(run_id: str, deps: RunnerDeps, *, startable_at: float | None = None) -> Run:
    """Carry one queued run to a terminal state; never raises for a failure of the run itself.

    `startable_at` (wall-clock seconds) is when the run could start: when its job was enqueued, which for a
    run that waited for its concurrency group is when the group passed to it. Its repository is fetched
    after that and after the fire, whichever is later, so it sees what the run before it pushed.

    A run found in a live state lost its worker: it is resumed from its event log (see app.run.resume):
    the phases run again, the workspace is restored from the last checkpoint, and the conversation
    goes on after the last recorded turn, without repeating a turn or a tool call that has a result.
    """
    run = await deps.store.get_run(run_id)
    if run.state.terminal:
        return run
    events = RunEvents(deps.store, run_id, deps.reporting.redactor(), RunMeter(deps.metrics, run))
    fresh_after = max(run.created_at, startable_at or 0.0)
    ctx = RunContext(run=run, routine=deps.routine(run.routine), events=events, fresh_after=fresh_after)
    start = events.start = deps.starts.begin()  # over once the model answers its first request (app.run.starts)
    answering = MODEL_ANSWERING.set(start.done)
    try:
        if run.state is RunState.QUEUED:
            await deps.store.transition(run_id, RunState.PREPARING)
        else:
            await _resuming(ctx, deps)
        await _resolve(ctx, deps)
        await _token(ctx, deps)
        await _workspace(ctx, deps)
        if run.state is not RunState.FINISHING:
            await deps.store.transition(run_id, RunState.RUNNING)
            await _agent(ctx, deps)
            await deps.store.transition(run_id, RunState.FINISHING)
        else:
            ctx.outcome = rebuild(ctx.history or [], [], lambda usage: deps.price(ctx.routine.model, usage)).outcome
        return await deliver_and_record(ctx, deps, error=None)
    except RoutinesError as exc:
        log.info("run %s failed: %s", run_id, exc)
        await events.emit("run.error", {"error": str(exc), "kind": type(exc).__name__})
        return await deliver_and_record(ctx, deps, error=str(exc))
    finally:
        start.done()
        MODEL_ANSWERING.reset(answering)
        if ctx.checkout is not None:
            await asyncio.to_thread(ctx.checkout.cleanup)  # thousands of unlinks: not on the event loop


async def _resolve(ctx: RunContext, deps: RunnerDeps) -> None:
    ctx.forge = deps.code.forge_for(ctx.run.repo)
    ctx.repo = await ctx.forge.resolve(ctx.run.repo)
    await ctx.events.emit(
        "run.repo", {"repo": ctx.repo.full_name, "forge": ctx.forge.name, "default_branch": ctx.repo.default_branch}
    )


async def _token(ctx: RunContext, deps: RunnerDeps) -> None:
    if ctx.forge is None or ctx.repo is None:
        return
    ctx.creds = await ctx.forge.credentials(ctx.repo, ctx.routine.permissions)
    if ctx.creds is not None:
        ctx.events.redactor.add("GITHUB_INSTALLATION_TOKEN", ctx.creds.password)
        await ctx.events.emit("run.token", {"repository": ctx.repo.full_name, "permissions": ctx.routine.permissions})


async def _workspace(ctx: RunContext, deps: RunnerDeps) -> None:
    if ctx.repo is None:
        return
    started = time.monotonic()
    base = await _pull_to_review(ctx, deps) if ctx.routine.outputs.get("review") else None
    follow_up_branch = ctx.run.trigger.data.get("branch") if ctx.run.trigger.data.get("follow_up") else None
    base = base or follow_up_branch or ctx.routine.base or ctx.repo.default_branch
    # any fetch begun since the run could start serves it: a burst of runs fired together shares one
    mirror = await deps.code.workspaces.ensure(ctx.repo.clone_url, ctx.creds, since=ctx.fresh_after)
    if ctx.pull is not None:  # the head under review, by commit: a fork's branch is not in the mirror
        await deps.code.workspaces.fetch_pull(mirror, ctx.repo.clone_url, ctx.creds, ctx.pull.number, ctx.pull.head_sha)
    dest = deps.settings.work_dir / ctx.run.id / "repo"
    if ctx.history is not None:
        base = _recorded_base(ctx.history) or base
        await asyncio.to_thread(deps.code.workspaces.discard, dest)
    ctx.checkout = await deps.code.workspaces.checkout(mirror, base, dest)
    ready: JSON = {"base": base, "commit": ctx.checkout.base_commit, "seconds": round(time.monotonic() - started, 3)}
    await ctx.events.emit("workspace.ready", ready)
    if ctx.history is not None:
        await _restore(ctx)


async def _resuming(ctx: RunContext, deps: RunnerDeps) -> None:
    """Read the log of a run whose worker died and say that it resumes."""
    ctx.history = await deps.store.events(ctx.run.id)
    done = rebuild(ctx.history, [], lambda usage: 0.0)
    data = {"attempt": done.resumes + 1, "from_turn": done.outcome.turns, "state": ctx.run.state.value}
    await ctx.events.emit("run.resumed", data)


def _recorded_base(history: list[Event]) -> str | None:
    """The base commit the interrupted attempt checked out (the branch may have moved since)."""
    for event in history:
        if event.type == "workspace.ready" and isinstance(event.data.get("commit"), str):
            return str(event.data["commit"])
    return None


async def _restore(ctx: RunContext) -> None:
    checkpoint = rebuild(ctx.history or [], [], lambda usage: 0.0).checkpoint
    if checkpoint is None or ctx.checkout is None:
        return
    commit = checkpoint.get("commit")
    how = await ctx.checkout.restore(commit if isinstance(commit, str) else None, str(checkpoint.get("patch") or ""))
    await ctx.events.emit("workspace.restored", {"turn": checkpoint.get("turn"), "commit": commit, "from": how})


async def _checkpoint(ctx: RunContext, hands: Hands, turn: int) -> None:
    """After a turn whose tools ran: snapshot the tree (staged in the sandbox) and, if it changed, record
    it (a commit in the run's checkpoint store + the patch in the log). A snapshot that fails is reported
    and the run goes on: the next turn tries again."""
    if ctx.checkout is None:
        return
    try:
        staged = await ctx.checkout.snapshot(hands)
        sha = await ctx.checkout.checkpoint(f"refs/routines/checkpoints/{ctx.run.id}")
    except RoutinesError as exc:
        await ctx.events.emit("workspace.snapshot_failed", {"turn": turn, "error": str(exc)})
        return
    if staged.skipped:
        await ctx.events.emit("workspace.skipped", {"turn": turn, "files": staged.skipped[:50]})
    if sha is not None:
        patch: str | None = None
        size: int | None = None  # None: the changed files were too large to build a patch from at all
        try:
            patch = await asyncio.to_thread(ctx.checkout.diff)
            size = len(patch)
        except WorkspaceError as exc:
            log.info("run %s: the patch of turn %d is left out: %s", ctx.run.id, turn, exc)
        if size is not None and size > MAX_CHECKPOINT_PATCH_CHARS:
            patch = None  # another machine resumes from the base; this one still has the commit
        data: JSON = {"turn": turn, "commit": sha, "patch": patch, "patch_chars": size}
        await ctx.events.emit("workspace.checkpoint", data)


async def _final_snapshot(ctx: RunContext, hands: Hands) -> None:
    """The tree the run delivers: staged once every process of the agent has ended. If that fails, the
    last checkpoint's tree is delivered and the failure is in the log."""
    if ctx.checkout is None:
        return
    try:
        await hands.stop()
        staged = await ctx.checkout.snapshot(hands)
    except RoutinesError as exc:
        await ctx.events.emit("workspace.snapshot_failed", {"final": True, "error": str(exc)})
        ctx.snapshot_error = f"the work tree could not be read at the end ({exc}); the last checkpoint is what was kept"
        return
    ctx.skipped = staged.skipped
    if staged.skipped:
        await ctx.events.emit("workspace.skipped", {"final": True, "files": staged.skipped[:50]})


async def _pull_to_review(ctx: RunContext, deps: RunnerDeps) -> str:
    """For a review routine: the pull request that fired the run; its head commit (not its branch, which
    may be a fork's) is what gets checked out."""
    data, run = ctx.run.trigger.data, ctx.run
    number = data.get("number")
    if not data.get("is_pull_request") or not isinstance(number, int) or isinstance(number, bool):
        raise RoutinesError(
            f"routine {run.routine!r} reviews pull requests but run {run.id} was not fired by a pull request "
            "event; fire it from on.github.pull_request"
        )
    outputs = deps.code.outputs_for(ctx.forge) if ctx.forge is not None else None
    if outputs is None or ctx.repo is None:
        raise ConfigError(f"routine {run.routine!r} has outputs.review, which needs a GitHub repository")
    ctx.pull = await outputs.read_pull(ctx.repo, number, ctx.creds)
    await ctx.events.emit(
        "run.pull_request",
        {"number": number, "url": ctx.pull.url, "head": ctx.pull.head_ref, "base": ctx.pull.base_ref},
    )
    return ctx.pull.head_sha


async def _agent(ctx: RunContext, deps: RunnerDeps) -> None:
    if ctx.checkout is None or ctx.repo is None:
        return
    run_dir = deps.settings.work_dir / ctx.run.id
    readied = await environment.prepare(ctx, deps, run_dir)
    try:
        await _agent_in(ctx, deps, run_dir, readied)
    finally:
        await environment.release(deps, ctx, readied)
    outcome = ctx.outcome
    if outcome is None:  # the conversation never started; the failure that stopped it was raised
        return
    summary = ctx.events.redactor.text(outcome.summary)  # readable through the API from now on
    await deps.store.update(
        ctx.run.id, turns=outcome.turns, usage=outcome.usage, cost_usd=outcome.cost_usd, summary=summary
    )


async def _agent_in(ctx: RunContext, deps: RunnerDeps, run_dir: Path, readied: environment.Readied | None) -> None:
    """The sandbox (on the environment's image, when there is one), its setup, then the conversation.

    Without a setup to run first, the conversation starts while the sandbox does: its first request needs
    nothing the sandbox makes, and every tool call waits for the sandbox (StartingHands). A start that
    fails fails the run, whether or not the model called a tool meanwhile."""
    if ctx.checkout is None:
        return
    # the path the sandbox shows the work tree at: the host made it, no command of the agent has run yet
    workdir = await asyncio.to_thread(ctx.checkout.path.resolve)
    starting = asyncio.create_task(_start_sandbox(ctx, deps, run_dir, workdir, readied))
    try:
        if readied is not None:
            _boundary, started = await asyncio.shield(starting)
            await environment.ready(ctx, deps, started, readied)
        own = ctx.events.start
        hands = StartingHands(workdir, lambda: _hands_of(starting), before=lambda: deps.starts.yield_to_others(own))
        await _conversation(ctx, deps, run_dir, hands)
        await asyncio.shield(starting)
    finally:
        await _end_sandbox(ctx, deps, starting)


async def _hands_of(starting: asyncio.Task[tuple[Boundary, Hands]]) -> Hands:
    return (await asyncio.shield(starting))[1]


async def _conversation(ctx: RunContext, deps: RunnerDeps, run_dir: Path, hands: Hands) -> None:
    routine = ctx.routine
    async with open_connectors(
        routine.connectors, deps.connector_secret, redactor=ctx.events.redactor, emit=ctx.events.emit
    ) as connectors:
        toolbox = Toolbox(
            routine.tools,
            hands=hands,
            command_timeout_s=deps.settings.command_timeout_s,
            memory=await _memory(ctx, deps, run_dir),
            connectors=connectors,
        )
        agent = Agent(deps.model, toolbox, ctx.events, _budget(routine, deps), hooks=_hooks(ctx, deps, hands))
        fork = ctx.pull is not None and ctx.pull.from_fork  # a fork's instructions are a stranger's: not followed
        read_file = ctx.checkout.base_file if ctx.checkout is not None and not fork else None
        system = build_system(routine, workspace=hands.workdir, read_file=read_file)
        first = build_first_message(ctx.run.trigger)
        if ctx.pull is not None:
            first += "\n\n" + fence(review_context(ctx.pull), "pull_request")
        ctx.outcome = await _converse(ctx, deps, agent, system, first)


async def _end_sandbox(ctx: RunContext, deps: RunnerDeps, starting: asyncio.Task[tuple[Boundary, Hands]]) -> None:
    """Stage the final tree and close the hands and the boundary. A start still under way when the run
    ends early is cancelled (no tool ran, so there is nothing to stage); one that failed closed itself."""
    if not starting.done():
        starting.cancel()
        await asyncio.wait([starting])
    if starting.cancelled() or starting.exception() is not None:
        return
    boundary, hands = starting.result()
    try:
        try:
            await deps.starts.yield_to_others(ctx.events.start)
            await _final_snapshot(ctx, hands)
        finally:
            await hands.close()
    finally:
        ctx.denied = boundary.denied
        await boundary.close()


async def _start_sandbox(
    ctx: RunContext, deps: RunnerDeps, run_dir: Path, workdir: Path, readied: environment.Readied | None
) -> tuple[Boundary, Hands]:
    """The run's boundary and the agent's hands inside it, counted as a sandbox start or failure. Without a
    setup, the sandbox is not on the way to the run's first request: it yields to other runs' starts."""
    meter = ctx.events.meter
    place = readied.place if readied is not None else None
    if readied is None:
        await deps.starts.yield_to_others(ctx.events.start)
    try:
        boundary = await deps.sandboxes.open(
            ctx.run.id, ctx.routine, run_dir, ctx.events.emit, ctx.events.redactor, place
        )
        try:
            if boundary.sandbox.name == "local":
                message = "commands ran unsandboxed (ROUTINES_SANDBOX=local)"
                await ctx.events.emit("sandbox.warning", {"sandbox": "local", "message": message})
                if readied is not None:
                    readied.unsaved()  # nothing to save a setup into without the sandbox's exchange folder
            env = {**SANDBOX_ENV, **environment.sandbox_env(readied), **boundary.env}
            hands = await boundary.sandbox.hands(workdir, env)
        except BaseException:
            await boundary.close()
            raise
    except Exception:
        if meter is not None:
            meter.sandbox_failed()
        raise
    if meter is not None:
        meter.sandbox_started()
    return boundary, hands


def _budget(routine: Routine, deps: RunnerDeps) -> Budget:
    limits = routine.limits
    return Budget(routine.model, limits.max_turns, limits.max_minutes, limits.max_cost_usd, price=deps.price)


def _hooks(ctx: RunContext, deps: RunnerDeps, hands: Hands) -> Hooks:
    check = deps.reporting.cancel_check
    return Hooks(
        cancelled=check(ctx.run.id) if check is not None else None,
        inbox=lambda: deps.store.take_messages(ctx.run.id),
        after_tools=lambda turn: _checkpoint(ctx, hands, turn),
    )


async def _converse(ctx: RunContext, deps: RunnerDeps, agent: Agent, system: list[JSON], first: str) -> AgentOutcome:
    """Run the conversation, or go on with the interrupted one rebuilt from the log."""
    if ctx.history is None:
        parent = ctx.run.trigger.data.get("parent_run") if ctx.run.trigger.data.get("follow_up") else None
        if isinstance(parent, str):
            return await _follow_up(ctx, deps, agent, system, first, parent)
        return await agent.run(system, first)
    task: list[JSON] = [{"type": "text", "text": first}]
    done = rebuild(ctx.history, task, lambda usage: deps.price(ctx.routine.model, usage))
    if done.finished:
        return done.outcome
    for call in done.interrupted:
        result = {"id": call.get("id"), "name": call.get("name"), "output": INTERRUPTED, "is_error": True}
        await ctx.events.emit("tool.result", {**result, "exit_code": None, "interrupted": True})
    turn = done.checkpoint.get("turn") if done.checkpoint else None
    messages = done.outcome.messages
    note = restart_note(done.outcome.turns, turn if isinstance(turn, int) else None)
    if messages[-1]["role"] == "user":
        messages[-1] = {"role": "user", "content": [*messages[-1]["content"], note]}
    else:
        messages.append({"role": "user", "content": [note]})
    return await agent.resume(system, messages, done.outcome, task=task, elapsed_s=_elapsed(ctx.history))


async def _follow_up(
    ctx: RunContext, deps: RunnerDeps, agent: Agent, system: list[JSON], feedback: str, parent_id: str
) -> AgentOutcome:
    """Go on with the conversation of the run that opened the PR, with the reviewers' feedback as the next turn."""
    parent = await deps.store.get_run(parent_id)
    task: list[JSON] = [{"type": "text", "text": build_first_message(parent.trigger)}]
    done = rebuild(await deps.store.events(parent_id), task, lambda usage: 0.0)
    messages = done.outcome.messages
    note: JSON = {
        "type": "text",
        "text": "Reviewers commented on the draft pull request you opened. Address their feedback on the same "
        "branch (it is checked out, with any commits pushed since), then summarise what you changed.\n\n" + feedback,
    }
    if messages[-1]["role"] == "user":
        messages[-1] = {"role": "user", "content": [*messages[-1]["content"], note]}
    else:
        messages.append({"role": "user", "content": [note]})
    await ctx.events.emit("run.follow_up", {"parent_run": parent_id, "parent_turns": done.outcome.turns})
    return await agent.resume(system, messages, AgentOutcome(), task=task)


def _elapsed(history: list[Event]) -> float:
    """Seconds the interrupted attempts spent conversing (the downtime does not count against max_minutes)."""
    requests = [e.ts for e in history if e.type == "model.request"]
    return max(history[-1].ts - requests[0], 0.0) if requests else 0.0


async def _memory(ctx: RunContext, deps: RunnerDeps, run_dir: Path) -> Memory | None:
    """The routine's memory folder for this run, restored from the store, when the routine uses `memory`."""
    if "memory" not in ctx.routine.tools or deps.memory_store is None:
        return None
    memory = await Memory.restore(deps.memory_store, ctx.routine.name, run_dir / "memories")
    await ctx.events.emit("memory.restored", memory.stats())
    return memory
