"""The end of a run: deliver what it produced (draft PR, review, report issue, notification) and record it."""

from __future__ import annotations

from typing import Any

from app.agent.loop import AgentOutcome
from app.core.domain import Routine, Run, RunState, run_branch
from app.core.errors import ConfigError, RoutinesError
from app.run.context import RunContext, RunnerDeps
from app.run.outputs import capped, deliver_report, deliver_review, report_text

AUTHOR = ("routines[bot]", "routines[bot]@users.noreply.github.com")


async def deliver_and_record(ctx: RunContext, deps: RunnerDeps, error: str | None) -> Run:
    """Deliver whatever changed — also after a limit or a failure, as an incomplete draft — and end the run."""
    outcome = ctx.outcome
    limit = outcome.limit if outcome else None
    error = error or (outcome.error if outcome else None) or ctx.snapshot_error
    incomplete = error is not None
    fields: dict[str, Any] = {"incomplete": incomplete}
    if outcome is not None:
        fields.update(turns=outcome.turns, usage=outcome.usage, cost_usd=outcome.cost_usd, summary=outcome.summary)
    if ctx.events.start is not None:
        ctx.events.start.done()  # a run that ends before its first request holds no one back while it delivers
    try:
        await deps.starts.yield_to_others()
        delivered = await _deliver_all(ctx, deps, incomplete=incomplete, error=error)
    except RoutinesError as exc:
        await ctx.events.emit("run.error", {"error": f"delivery failed: {exc}", "kind": type(exc).__name__})
        delivered, error = None, error or f"delivery failed: {exc}"
    if delivered:
        fields.update(delivered)
    if error is not None:
        ending = {"max_minutes": RunState.TIMED_OUT, "cancelled": RunState.CANCELLED}
        state = ending.get(limit or "", RunState.FAILED)
        fields["error"] = error
    else:
        state = RunState.SUCCEEDED if delivered else RunState.NO_CHANGES
    fields = ctx.events.redactor.redact(fields)
    current = await deps.store.get_run(ctx.run.id)
    if current.state.terminal:
        final = await deps.store.update(ctx.run.id, **fields)
    else:
        final = await deps.store.transition(ctx.run.id, state, **fields)
    await _notify(ctx, deps, final)
    if deps.reporting.on_finished is not None:
        await deps.reporting.on_finished(final)
    return final


async def _deliver_all(
    ctx: RunContext, deps: RunnerDeps, *, incomplete: bool, error: str | None
) -> dict[str, Any] | None:
    """Every output the routine asked for; what was delivered, as run fields (None: nothing)."""
    outputs = ctx.routine.outputs
    delivered: dict[str, Any] = {}
    if outputs.get("review"):
        delivered.update(await _deliver_review(ctx, deps, incomplete=incomplete) or {})
    elif "pull_request" in outputs:
        delivered.update(await _deliver(ctx, deps, incomplete=incomplete, error=error) or {})
    if outputs.get("issue"):
        delivered.update(await _deliver_report(ctx, deps, error=error) or {})
    if delivered.get("report") is not None:
        delivered.setdefault("outputs", {})["issue"] = delivered.pop("report")
    return delivered or None


def _footer(ctx: RunContext, deps: RunnerDeps) -> str:
    outcome = ctx.outcome
    turns, cost = (outcome.turns, outcome.cost_usd) if outcome else (0, 0.0)
    link = f"[{ctx.run.id}]({deps.settings.run_url(ctx.run.id)})"
    return f"Routine `{ctx.routine.name}` · run {link} · {turns} turns · ${cost:.4f}"


async def _deliver_review(ctx: RunContext, deps: RunnerDeps, *, incomplete: bool) -> dict[str, Any] | None:
    """A review routine posts its review on the pull request; it never pushes."""
    forge = deps.code.outputs_for(ctx.forge) if ctx.forge is not None else None
    summary = (ctx.outcome.summary if ctx.outcome else "").strip()
    if forge is None or ctx.repo is None or ctx.pull is None or not summary:
        await ctx.events.emit("output.none", {"reason": "no review to post"})
        return None
    if incomplete:
        summary = f"> [!WARNING]\n> **Incomplete review**: the run stopped before it finished.\n\n{summary}"
    text = ctx.events.redactor.text(summary)
    result = await deliver_review(
        forge, ctx.repo, ctx.pull.number, text, ctx.creds, footer=_footer(ctx, deps), reviewed=ctx.pull.head_sha
    )
    review = {"id": result.review_id, "url": result.url, "inline": result.inline, "moved": result.moved}
    await ctx.events.emit("output.review", {"number": ctx.pull.number, **review})
    ctx.links.append((f"review of #{ctx.pull.number}", result.url))
    return {"outputs": {"review": review}}


async def _deliver_report(ctx: RunContext, deps: RunnerDeps, *, error: str | None) -> dict[str, Any] | None:
    """An issue routine keeps one report issue up to date, also when the run failed."""
    forge = deps.code.outputs_for(ctx.forge) if ctx.forge is not None else None
    if forge is None or ctx.repo is None:
        raise ConfigError(f"routine {ctx.routine.name!r} has outputs.issue, which needs a GitHub repository")
    summary = ctx.events.redactor.text(ctx.outcome.summary if ctx.outcome else "")
    title, body = report_text(ctx.routine.name, summary, error, _footer(ctx, deps))
    issue = await deliver_report(forge, ctx.repo, ctx.routine.name, title, body, ctx.creds)
    await ctx.events.emit("output.issue", {"number": issue.number, "url": issue.url, "created": issue.created})
    ctx.links.append((f"report #{issue.number}", issue.url))
    return {"report": {"number": issue.number, "url": issue.url}}


async def _notify(ctx: RunContext, deps: RunnerDeps, final: Run) -> None:
    if not ctx.routine.outputs.get("notify") or deps.reporting.notify is None:
        return
    if final.pull_request is not None:
        ctx.links.insert(0, (f"draft PR #{final.pull_request.number}", final.pull_request.url))
    results = await deps.reporting.notify(ctx.routine, final, ctx.links)
    await ctx.events.emit("output.notify", {"targets": results})


async def _deliver(ctx: RunContext, deps: RunnerDeps, *, incomplete: bool, error: str | None) -> dict[str, Any] | None:
    if ctx.checkout is None or ctx.repo is None or ctx.forge is None:
        return None
    changed = ctx.checkout.changed_files()
    if not changed:
        await ctx.events.emit("output.none", {"reason": "no file changed"})
        return None
    routine, run = ctx.routine, ctx.run
    title = ctx.events.redactor.text(_title(routine, ctx.outcome, incomplete))  # the commit keeps it for good
    sha = await ctx.checkout.commit(f"{title}\n\nRun: {deps.settings.run_url(run.id)}", *AUTHOR)
    if sha is None:
        return None
    follow_up = run.trigger.data.get("branch") if run.trigger.data.get("follow_up") else None
    branch = follow_up if isinstance(follow_up, str) else run_branch(routine.name, run.id)
    # a follow-up's branch is a pull request people may push to: only fast-forward it
    await ctx.checkout.push(ctx.repo.clone_url, branch, ctx.creds, force=not isinstance(follow_up, str))
    await ctx.events.emit("output.branch", {"branch": branch, "commit": sha, "files": changed[:200]})
    result: dict[str, Any] = {"branch": branch}
    if ctx.forge.name == "local":
        return result
    pr = await ctx.forge.find_pull_request(ctx.repo, branch, ctx.creds)
    if pr is None:
        base = routine.base or ctx.repo.default_branch
        body = capped(ctx.events.redactor.text(pr_body(ctx, deps, changed, incomplete=incomplete, error=error)))
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


def pr_body(ctx: RunContext, deps: RunnerDeps, changed: list[str], *, incomplete: bool, error: str | None) -> str:
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
    if ctx.skipped:
        lines += ["<details><summary>Files left out of this pull request</summary>", ""]
        lines += [f"- `{item.get('path')}`: {item.get('reason')}" for item in ctx.skipped[:50]]
        lines += ["", "Remove them, or add them to `.gitignore`, if they are not meant to be committed."]
        lines += ["</details>", ""]
    if ctx.denied:
        hosts = sorted({f"{d.get('host')}:{d.get('port')} ({d.get('reason')})" for d in ctx.denied})
        lines += ["<details><summary>Network requests refused by the egress proxy</summary>", ""]
        lines += [f"- `{h}`" for h in hosts[:50]]
        lines += ["", "Add the hosts the routine needs to `network.allow`.", "</details>", ""]
    cost = outcome.cost_usd if outcome else 0.0
    turns = outcome.turns if outcome else 0
    lines += [
        "---",
        f"Routine `{ctx.routine.name}` · run [{ctx.run.id}]({deps.settings.run_url(ctx.run.id)}) · "
        f"{turns} turns · ${cost:.4f} · {len(changed)} files changed",
        "",
        "_Opened as a draft by Routines. Review before merging; Routines never merges._",
    ]
    return "\n".join(lines)
