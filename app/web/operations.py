"""What the API and the console both do to routines and runs: fire, steer, cancel. One implementation, so
the two doors behave the same; callers check who may knock."""

from __future__ import annotations

from app.core.domain import Event, Routine, Run, RunState, Trigger
from app.core.errors import ForgeError, NotAllowed
from app.services import Services
from app.store.cancels import CancelFlags
from app.triggers.dispatch import fire_checked, named_repo, release


async def allowed_repo(services: Services, routine: Routine, repo: str) -> str:
    """`repo` as the run will use it, when the routine may run there (NotAllowed otherwise)."""
    named, check_installed = named_repo(routine, repo)
    if not check_installed:
        return named
    if services.github is None:
        raise NotAllowed(f"routine {routine.name!r} runs on any installed repository, but no GitHub App is set up")
    try:
        return (await services.github.resolve(named)).full_name
    except ForgeError as exc:
        raise NotAllowed(f"routine {routine.name!r} cannot run on {repo!r}: {exc}") from None


async def fire_now(services: Services, routine: Routine, *, text: str | None, repo: str | None, actor: str) -> Run:
    """Start a run of `routine` fired by `actor` through the API or the console. Raises NotAllowed (a repo
    the routine may not name), Refused (paused, archived, a quota) or ConfigError."""
    target = await allowed_repo(services, routine, repo) if repo is not None else None
    trigger = Trigger(kind="api", text=text, actor=actor)
    return await fire_checked(
        services.store,
        services.pool,
        routine,
        trigger,
        repo=target,
        max_runs_per_day=services.settings.max_runs_per_day,
    )


async def send_message(services: Services, run: Run, text: str) -> None:
    """A message the run's model sees at its next turn."""
    await services.store.push_message(run.id, text)
    await services.store.append_event(run.id, Event("run.message", {"text": text}))


async def cancel(services: Services, run: Run) -> Run:
    """Stop a run: a queued one ends now, a running one before its next model turn (partial work delivered)."""
    if run.state is RunState.QUEUED:
        run = await services.store.transition(run.id, RunState.CANCELLED, error="cancelled before it started")
        await release(services.store, services.pool, run.id)
        return run
    await CancelFlags(services.store.redis, services.store.prefix).request(run.id)
    await services.store.append_event(run.id, Event("run.cancel_requested", {}))
    return run
