"""A trigger becomes a run: record it as queued, then enqueue its job (once, by its id)."""

from __future__ import annotations

from arq.connections import ArqRedis

from app import queue
from app.domain import Routine, Run, Trigger, new_run_id
from app.errors import ConfigError
from app.store import RedisStore


async def fire(store: RedisStore, pool: ArqRedis, routine: Routine, trigger: Trigger, repo: str | None = None) -> Run:
    """Create the run record before the job, so a worker never picks up a job without a run."""
    target = repo or _single_repo(routine)
    run = Run(id=new_run_id(), routine=routine.name, repo=target, trigger=trigger)
    await store.create_run(run)
    await queue.enqueue_run(pool, run.id)
    return run


def _single_repo(routine: Routine) -> str:
    repos = routine.repos
    if len(repos) != 1 or repos[0] == "*":
        raise ConfigError(
            f"routine {routine.name!r} applies to several repositories; fire it from a GitHub event "
            "or name the repository"
        )
    return repos[0]
