"""One run, end to end, as named phases: resolve → token → workspace → agent → deliver → record."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.agent.connectors import SecretLookup, open_connectors
from app.agent.loop import Agent, AgentOutcome
from app.agent.memory import Memory, MemoryStore
from app.agent.prompts import build_first_message, build_system
from app.agent.tools import Toolbox
from app.domain import JSON, Event, Routine, Run, RunState, run_branch
from app.errors import RoutinesError
from app.ports import Boundary, Checkout, Credentials, Forge, ModelClient, Redacts, RepoInfo, Store, Workspaces

log = logging.getLogger(__name__)

AUTHOR = ("routines[bot]", "routines[bot]@users.noreply.github.com")
# Bytecode caches would land in the PR of a repo without a .gitignore, and a same-second,
# same-size edit would run the stale .pyc.
SANDBOX_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}


@dataclass
class RunnerDeps:
    """Everything a run touches, passed in (services.py builds the real ones, tests their own)."""

    store: Store
    routine: Callable[[str], Routine]
    forge_for: Callable[[str], Forge]
    workspaces: Workspaces
    boundary: Callable[[str, Routine, Path, Callable[[str, JSON], Awaitable[None]], Redacts], Awaitable[Boundary]]
    redactor: Callable[[], Redacts]
    model: ModelClient
    run_url: Callable[[str], str]
    work_dir: Path
    price: Callable[[str, dict[str, int]], float]
    command_timeout_s: float = 600.0
    on_finished: Callable[[Run], Awaitable[None]] | None = None
    memory_store: MemoryStore | None = None
    connector_secret: SecretLookup | None = None


class RunEvents:
    """The EventSink of one run: appends to its log in the store, with every known secret redacted."""

    def __init__(self, store: Store, run_id: str, redactor: Redacts) -> None:
        self.store = store
        self.run_id = run_id
        self.redactor = redactor

    async def emit(self, type: str, data: JSON) -> None:
        await self.store.append_event(self.run_id, Event(type, self.redactor.redact(data)))


@dataclass
class _Context:
    run: Run
    routine: Routine
    events: RunEvents
    forge: Forge | None = None
    repo: RepoInfo | None = None
    creds: Credentials | None = None
    checkout: Checkout | None = None
    outcome: AgentOutcome | None = None
    denied: list[JSON] = field(default_factory=list)


async def execute(run_id: str, deps: RunnerDeps) -> Run:
    """Carry one queued run to a terminal state; never raises for a failure of the run itself."""
    run = await deps.store.get_run(run_id)
    if run.state.terminal:
        return run
    events = RunEvents(deps.store, run_id, deps.redactor())
    ctx = _Context(run=run, routine=deps.routine(run.routine), events=events)
    try:
        await deps.store.transition(run_id, RunState.PREPARING)
        await _resolve(ctx, deps)
        await _token(ctx, deps)
        await _workspace(ctx, deps)
        await deps.store.transition(run_id, RunState.RUNNING)
        await _agent(ctx, deps)
        await deps.store.transition(run_id, RunState.FINISHING)
        return await _deliver_and_record(ctx, deps, error=None)
    except RoutinesError as exc:
        log.info("run %s failed: %s", run_id, exc)
        await events.emit("run.error", {"error": str(exc), "kind": type(exc).__name__})
        return await _deliver_and_record(ctx, deps, error=str(exc))
    finally:
        if ctx.checkout is not None:
            ctx.checkout.cleanup()


async def _resolve(ctx: _Context, deps: RunnerDeps) -> None:
    ctx.forge = deps.forge_for(ctx.run.repo)
    ctx.repo = await ctx.forge.resolve(ctx.run.repo)
    await ctx.events.emit(
        "run.repo", {"repo": ctx.repo.full_name, "forge": ctx.forge.name, "default_branch": ctx.repo.default_branch}
    )


async def _token(ctx: _Context, deps: RunnerDeps) -> None:
    if ctx.forge is None or ctx.repo is None:
        return
    ctx.creds = await ctx.forge.credentials(ctx.repo, ctx.routine.permissions)
    if ctx.creds is not None:
        ctx.events.redactor.add("GITHUB_INSTALLATION_TOKEN", ctx.creds.password)
        await ctx.events.emit("run.token", {"repository": ctx.repo.full_name, "permissions": ctx.routine.permissions})


async def _workspace(ctx: _Context, deps: RunnerDeps) -> None:
    if ctx.repo is None:
        return
    started = time.monotonic()
    base = ctx.routine.base or ctx.repo.default_branch
    mirror = await deps.workspaces.ensure(ctx.repo.clone_url, ctx.creds)
    dest = deps.work_dir / ctx.run.id / "repo"
    ctx.checkout = await deps.workspaces.checkout(mirror, base, dest)
    await ctx.events.emit("workspace.ready", {"base": base, "seconds": round(time.monotonic() - started, 3)})


async def _agent(ctx: _Context, deps: RunnerDeps) -> None:
    if ctx.checkout is None or ctx.repo is None:
        return
    routine = ctx.routine
    run_dir = deps.work_dir / ctx.run.id
    boundary = await deps.boundary(ctx.run.id, routine, run_dir, ctx.events.emit, ctx.events.redactor)
    try:
        if boundary.sandbox.name == "local":
            await ctx.events.emit(
                "sandbox.warning", {"sandbox": "local", "message": "commands ran unsandboxed (ROUTINES_SANDBOX=local)"}
            )
        shell = await boundary.sandbox.shell(ctx.checkout.path, {**SANDBOX_ENV, **boundary.env})
        try:
            async with open_connectors(
                routine.connectors, deps.connector_secret, redactor=ctx.events.redactor, emit=ctx.events.emit
            ) as connectors:
                toolbox = Toolbox(
                    routine.tools,
                    shell=shell,
                    workspace=ctx.checkout.path,
                    command_timeout_s=deps.command_timeout_s,
                    memory=await _memory(ctx, deps, run_dir),
                    connectors=connectors,
                )
                agent = Agent(
                    deps.model,
                    toolbox,
                    ctx.events,
                    model_name=routine.model,
                    max_turns=routine.limits.max_turns,
                    max_minutes=routine.limits.max_minutes,
                    max_cost_usd=routine.limits.max_cost_usd,
                    price=deps.price,
                )
                system = build_system(routine, workspace=ctx.checkout.path)
                ctx.outcome = await agent.run(system, build_first_message(ctx.run.trigger))
        finally:
            await shell.close()
    finally:
        ctx.denied = boundary.denied
        await boundary.close()
    outcome = ctx.outcome
    await deps.store.update(
        ctx.run.id, turns=outcome.turns, usage=outcome.usage, cost_usd=outcome.cost_usd, summary=outcome.summary
    )


async def _memory(ctx: _Context, deps: RunnerDeps, run_dir: Path) -> Memory | None:
    """The routine's memory folder for this run, restored from the store, when the routine uses `memory`."""
    if "memory" not in ctx.routine.tools or deps.memory_store is None:
        return None
    memory = await Memory.restore(deps.memory_store, ctx.routine.name, run_dir / "memories")
    await ctx.events.emit("memory.restored", memory.stats())
    return memory


async def _deliver_and_record(ctx: _Context, deps: RunnerDeps, error: str | None) -> Run:
    """Deliver whatever changed — also after a limit or a failure, as an incomplete draft — and end the run."""
    outcome = ctx.outcome
    limit = outcome.limit if outcome else None
    error = error or (outcome.error if outcome else None)
    incomplete = error is not None
    fields: dict[str, Any] = {"incomplete": incomplete}
    if outcome is not None:
        fields.update(turns=outcome.turns, usage=outcome.usage, cost_usd=outcome.cost_usd, summary=outcome.summary)
    try:
        delivered = await _deliver(ctx, deps, incomplete=incomplete, error=error)
    except RoutinesError as exc:
        await ctx.events.emit("run.error", {"error": f"delivery failed: {exc}", "kind": type(exc).__name__})
        delivered, error = None, error or f"delivery failed: {exc}"
    if delivered:
        fields.update(delivered)
    if error is not None:
        state = RunState.TIMED_OUT if limit == "max_minutes" else RunState.FAILED
        fields["error"] = error
    else:
        state = RunState.SUCCEEDED if delivered else RunState.NO_CHANGES
    fields = ctx.events.redactor.redact(fields)
    current = await deps.store.get_run(ctx.run.id)
    if current.state.terminal:
        final = await deps.store.update(ctx.run.id, **fields)
    else:
        final = await deps.store.transition(ctx.run.id, state, **fields)
    if deps.on_finished is not None:
        await deps.on_finished(final)
    return final


async def _deliver(ctx: _Context, deps: RunnerDeps, *, incomplete: bool, error: str | None) -> dict[str, Any] | None:
    if ctx.checkout is None or ctx.repo is None or ctx.forge is None:
        return None
    changed = ctx.checkout.changed_files()
    if not changed:
        await ctx.events.emit("output.none", {"reason": "no file changed"})
        return None
    routine, run = ctx.routine, ctx.run
    title = _title(routine, ctx.outcome, incomplete)
    sha = await ctx.checkout.commit(f"{title}\n\nRun: {deps.run_url(run.id)}", *AUTHOR)
    if sha is None:
        return None
    branch = run_branch(routine.name, run.id)
    await ctx.checkout.push(ctx.repo.clone_url, branch, ctx.creds)
    await ctx.events.emit("output.branch", {"branch": branch, "commit": sha, "files": changed[:200]})
    result: dict[str, Any] = {"branch": branch}
    if ctx.forge.name == "local":
        return result
    pr = await ctx.forge.find_pull_request(ctx.repo, branch, ctx.creds)
    if pr is None:
        base = routine.base or ctx.repo.default_branch
        body = ctx.events.redactor.text(pr_body(ctx, deps, changed, incomplete=incomplete, error=error))
        pr = await ctx.forge.open_pull_request(
            ctx.repo, head=branch, base=base, title=title, body=body, draft=True, creds=ctx.creds
        )
    await ctx.events.emit("output.pull_request", {"number": pr.number, "url": pr.url, "draft": True})
    result["pull_request"] = {"number": pr.number, "url": pr.url}
    return result


def _title(routine: Routine, outcome: AgentOutcome | None, incomplete: bool) -> str:
    first = (outcome.summary.strip().splitlines() or [""])[0].lstrip("# ").strip() if outcome else ""
    title = first[:72] if first else f"{routine.name}: changes from a routine run"
    return f"[incomplete] {title}" if incomplete else title


def pr_body(ctx: _Context, deps: RunnerDeps, changed: list[str], *, incomplete: bool, error: str | None) -> str:
    """The PR body: the agent's summary, the commands it ran, the cost, and the link to the run."""
    outcome = ctx.outcome
    lines: list[str] = []
    if incomplete:
        lines += [
            f"> [!WARNING]\n> **Incomplete**: {error}. The changes so far are below; what remains is not done.",
            "",
        ]
    lines += [(outcome.summary.strip() if outcome and outcome.summary.strip() else "_The agent left no summary._"), ""]
    if outcome and outcome.commands:
        shown = outcome.commands[-30:]
        lines += ["<details><summary>Commands run</summary>", "", "```console"]
        lines += [f"$ {c.splitlines()[0][:200] if c.strip() else c}" for c in shown]
        lines += ["```", "</details>", ""]
    if ctx.denied:
        hosts = sorted({f"{d.get('host')}:{d.get('port')} ({d.get('reason')})" for d in ctx.denied})
        lines += ["<details><summary>Network requests refused by the egress proxy</summary>", ""]
        lines += [f"- `{h}`" for h in hosts[:50]]
        lines += ["", "Add the hosts the routine needs to `network.allow`.", "</details>", ""]
    cost = outcome.cost_usd if outcome else 0.0
    turns = outcome.turns if outcome else 0
    lines += [
        "---",
        f"Routine `{ctx.routine.name}` · run [{ctx.run.id}]({deps.run_url(ctx.run.id)}) · "
        f"{turns} turns · ${cost:.4f} · {len(changed)} files changed",
        "",
        "_Opened as a draft by Routines. Review before merging; Routines never merges._",
    ]
    return "\n".join(lines)
