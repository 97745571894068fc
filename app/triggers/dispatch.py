"""A trigger becomes a run: record it, apply the routine's state and limits, then enqueue its job once.

Order: the run record is created first (so a refusal is visible as a cancelled run with a `run.refused`
event), then paused/archived and the daily quotas are checked, then the run joins its concurrency group
(it starts at once, or waits for the run holding the group), and only a run that may start is enqueued.
"""

from __future__ import annotations

import os
import re

from arq.connections import ArqRedis

from app.core.domain import Event, Routine, Run, RunState, Trigger, is_local_repo, new_run_id
from app.core.errors import ConfigError, InvalidTransition, NotAllowed, Refused, RunNotFound
from app.core.metrics import RUNS_REFUSED
from app.routines.files import render_group
from app.store import queue
from app.store.cancels import CancelFlags
from app.store.groups import ConcurrencyGroups
from app.store.metrics import count_now
from app.store.quotas import Quotas
from app.store.routine_states import RoutineStates
from app.store.runs import RedisStore


async def fire(
    store: RedisStore,
    pool: ArqRedis,
    routine: Routine,
    trigger: Trigger,
    repo: str | None = None,
    *,
    run_id: str | None = None,
    max_runs_per_day: int | None = None,
) -> Run:
    """Like `fire_checked`, but a refused run is returned (state cancelled, `error` naming the limit)."""
    try:
        return await fire_checked(store, pool, routine, trigger, repo, run_id=run_id, max_runs_per_day=max_runs_per_day)
    except Refused as exc:
        if exc.run is None:
            raise
        return exc.run


async def fire_checked(
    store: RedisStore,
    pool: ArqRedis,
    routine: Routine,
    trigger: Trigger,
    repo: str | None = None,
    *,
    run_id: str | None = None,
    max_runs_per_day: int | None = None,
) -> Run:
    """Create and start (or queue) a run; raise Refused (`.run` set, recorded as cancelled) when the routine
    is paused or archived or a daily quota is used up. `max_runs_per_day` is the global cap
    (ROUTINES_MAX_RUNS_PER_DAY). Given a `run_id` that exists already (a retried job), the run is only
    started if it was not yet, never created twice.
    """
    target = repo or _single_repo(routine)
    groups = ConcurrencyGroups(store.redis, store.prefix)
    if run_id is not None:
        existing = await _existing(store, run_id)
        if existing is not None:
            if existing.state is RunState.QUEUED:
                await _start(store, pool, groups, routine, existing, retry=True)
            return existing
    run = Run(id=run_id or new_run_id(), routine=routine.name, repo=target, trigger=trigger)
    await store.create_run(run)
    try:
        await RoutineStates(store.redis, store.prefix).check_active(routine)
        await Quotas(store.redis, store.prefix).take(routine, max_runs_per_day)
    except Refused as exc:
        await store.append_event(run.id, Event("run.refused", {"limit": exc.limit, "reason": str(exc)}))
        exc.run = await store.transition(run.id, RunState.CANCELLED, error=str(exc))
        await count_now(store.redis, store.prefix, RUNS_REFUSED, routine=routine.name, limit=exc.limit)
        raise
    await _start(store, pool, groups, routine, run)
    return run


async def release(store: RedisStore, pool: ArqRedis, run_id: str) -> str | None:
    """The run ended: hand its concurrency group to the next waiting run and enqueue it (its id, or None)."""
    nxt = await ConcurrencyGroups(store.redis, store.prefix).release(run_id)
    if nxt is not None:
        await queue.enqueue_run(pool, nxt)
    return nxt


async def restart_stalled_groups(store: RedisStore, pool: ArqRedis) -> list[str]:
    """Enqueue each group-holding run still `queued`: a worker that died between handing a group over
    and enqueueing the next run left it there. A run whose job exists is not queued twice (job id)."""
    started = []
    for run_id in await ConcurrencyGroups(store.redis, store.prefix).holders():
        try:
            run = await store.get_run(run_id)
        except RunNotFound:
            continue  # expired; the group frees itself when its holder is gone
        if run.state is RunState.QUEUED and await queue.enqueue_run(pool, run_id):
            started.append(run_id)
    return started


def group_of(routine: Routine, repo: str) -> str | None:
    """The run's concurrency group (`concurrency.group` rendered for this repo), or None."""
    template = routine.concurrency.group
    return render_group(template, routine, repo) if template else None


async def _start(
    store: RedisStore, pool: ArqRedis, groups: ConcurrencyGroups, routine: Routine, run: Run, *, retry: bool = False
) -> None:
    group = group_of(routine, run.repo)
    if group is None:
        await queue.enqueue_run(pool, run.id)
        return
    if retry:
        members = await groups.members(group)
        if run.id in members:
            if members[0] == run.id:
                await queue.enqueue_run(pool, run.id)
            return
    if routine.concurrency.cancel_in_progress:
        await _cancel_group(store, groups, group, by=run.id)
    admission = await groups.admit(run.id, group)
    if admission.behind is not None:
        await store.append_event(run.id, Event("run.waiting", {"group": group, "behind": admission.behind}))
    if admission.start is not None:
        await queue.enqueue_run(pool, admission.start)


async def _cancel_group(store: RedisStore, groups: ConcurrencyGroups, group: str, *, by: str) -> None:
    """cancel_in_progress: queued runs of the group end now; a running one is asked to stop."""
    reason = f"superseded by run {by}: concurrency group {group!r} cancels runs in progress"
    for member in await groups.members(group):
        try:
            older = await store.get_run(member)
        except RunNotFound:
            continue
        if older.state.terminal:
            continue
        await CancelFlags(store.redis, store.prefix).request(member)
        await store.append_event(member, Event("run.cancel_requested", {"by": by, "group": group}))
        if older.state is RunState.QUEUED:
            try:
                await store.transition(member, RunState.CANCELLED, error=reason)
            except InvalidTransition:
                continue


async def _existing(store: RedisStore, run_id: str) -> Run | None:
    try:
        return await store.get_run(run_id)
    except RunNotFound:
        return None


_OWNER_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")


def named_repo(routine: Routine, repo: str) -> tuple[str, bool]:
    """What a caller may name as the repository of a run of `routine`: `(repo as the routine spells it,
    whether the App must still be shown to be installed there)`. Raises NotAllowed otherwise.

    A repository of the routine's list is allowed (owner/name ignoring case; a local path only when
    the routine's own `repo:` is that path). A `*` routine allows any `owner/name` the App is installed
    on — never a local path, so a fire token cannot point a run at the worker's own disk.
    """
    local = is_local_repo(repo)
    for own in routine.repos:
        if own == "*" or is_local_repo(own) != local:
            continue
        if (local and _same_path(own, repo)) or (not local and own.lower() == repo.lower()):
            return own, False
    if not local and "*" in routine.repos and _OWNER_NAME.fullmatch(repo) and ".." not in repo:
        return repo, True
    listed = ", ".join(r for r in routine.repos if r != "*") or "any installed owner/name"
    raise NotAllowed(
        f"routine {routine.name!r} does not run on {repo!r}; name one of its repositories ({listed}) "
        f"or leave `repo` out"
    )


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(os.path.expanduser(a)) == os.path.normpath(os.path.expanduser(b))


def _single_repo(routine: Routine) -> str:
    repos = routine.repos
    if len(repos) != 1 or repos[0] == "*":
        raise ConfigError(
            f"routine {routine.name!r} applies to several repositories; fire it from a GitHub event "
            "or name the repository"
        )
    return repos[0]
