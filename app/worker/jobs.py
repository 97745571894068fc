"""The worker's jobs: a run, a schedule slot, a GitHub delivery. Each is an arq job with a fixed id where it
must happen once: a run by its id, a slot `<routine>:<slot_ms>`, a delivery `delivery:<guid>`."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis

from app.core.domain import JSON, Event, Routine, RunState, Trigger, new_run_id
from app.core.errors import ForgeError, RoutineNotFound, RoutinesError
from app.core.logs import run_scope
from app.forge.github_app import GitHubApp
from app.run.runner import execute
from app.services import Services
from app.store.leases import Leases
from app.triggers.deliveries import DeliveryDeps, process_delivery
from app.triggers.dispatch import fire, release
from app.triggers.matching import event_repo, pull_number
from app.triggers.schedules import Slot
from app.triggers.tracking import Acknowledger

log = logging.getLogger(__name__)

FIRE_SLOT_JOB = "fire_slot"
SLOT_KEEP_S = 7 * 86400


async def enqueue_slot(pool: ArqRedis, routine: Routine, slot: Slot) -> bool:
    """Enqueue the slot's fire job once (False: another worker did). A routine on `*` has no repo to run on."""
    if "*" in routine.repos:
        log.warning("routine %s: a schedule needs repo: owner/name or a list, not '*'; slot skipped", routine.name)
        return False
    runs = [[repo, new_run_id()] for repo in routine.repos]
    job = await pool.enqueue_job(
        FIRE_SLOT_JOB, routine.name, slot.ms, slot.cron, slot.timezone, runs, _job_id=slot.job_id
    )
    return job is not None


async def fire_slot(
    ctx: dict[str, Any], name: str, slot_ms: int, cron: str, timezone: str, runs: list[list[str]]
) -> list[str]:
    """The job of one schedule slot: fire the routine once per repository, with the run ids chosen at the tick."""
    services: Services = ctx["services"]
    await services.refresh_routines()
    try:
        routine = services.catalog.get(name)
    except RoutineNotFound:
        log.warning("schedule slot %s:%s: routine %s is gone; nothing fired", name, slot_ms, name)
        return []
    slot = datetime.fromtimestamp(slot_ms / 1000, UTC).isoformat()
    trigger = Trigger(
        "schedule", actor="schedule", data={"slot": slot, "slot_ms": slot_ms, "cron": cron, "timezone": timezone}
    )
    fired = []
    for repo, run_id in runs:
        run = await fire(
            services.store,
            services.pool,
            routine,
            trigger,
            repo,
            run_id=run_id,
            max_runs_per_day=ctx["max_runs_per_day"],
        )
        fired.append(run.id)
    return fired


async def run_routine(ctx: dict[str, Any], run_id: str) -> str:
    """The job boundary: whatever happens, the run ends in a terminal state with a reason, and its
    concurrency group passes to the next waiting run. Everything logged meanwhile is logged for the run
    (`run_id` in JSON log lines)."""
    unfinished: set[str] = ctx.get("unfinished", set())  # the worker's: handed back at shutdown (worker.hand_back)
    unfinished.add(run_id)
    with run_scope(run_id):
        try:
            result = await _run_routine(ctx, run_id)
        except asyncio.CancelledError:
            raise  # the worker is stopping: the run is not over
        except BaseException:
            unfinished.discard(run_id)
            raise
    unfinished.discard(run_id)
    return result


async def _run_routine(ctx: dict[str, Any], run_id: str) -> str:
    services: Services = ctx["services"]
    leases: Leases = ctx["leases"]
    await services.refresh_routines()
    async with leases.held(run_id, ctx["worker_id"]) as held:
        if not held:
            log.info("run %s is held by another worker; this job (%s) does nothing", run_id, ctx.get("job_id"))
            return "held elsewhere"
        enqueued = ctx.get("enqueue_time")  # arq's: when this job was enqueued (a group waiter's: its turn)
        try:
            result = await _execute(services, run_id, enqueued.timestamp() if isinstance(enqueued, datetime) else None)
        except asyncio.CancelledError:
            log.warning("run %s: this worker is stopping; another worker resumes the run", run_id)
            raise  # not over: it keeps its concurrency group and stays live for the reaper
        except BaseException:
            await _release_group(services, run_id)
            raise
        await _release_group(services, run_id)
        return result


async def _release_group(services: Services, run_id: str) -> None:
    try:
        await release(services.store, services.pool, run_id)
    except RoutinesError:
        log.exception("could not release the concurrency group of run %s", run_id)


async def _execute(services: Services, run_id: str, startable_at: float | None) -> str:
    try:
        run = await execute(run_id, await services.runner_deps(), startable_at=startable_at)
        return run.state.value
    except Exception as exc:
        log.exception("run %s crashed", run_id)
        message = str(exc) if isinstance(exc, RoutinesError) else f"internal error: {type(exc).__name__}: {exc}"
        try:
            await services.store.append_event(run_id, Event("run.error", {"error": message}))
            run = await services.store.get_run(run_id)
            if not run.state.terminal:
                await services.store.transition(run_id, RunState.FAILED, error=message)
        except RoutinesError:
            log.exception("could not record the failure of run %s", run_id)
        return RunState.FAILED.value


async def handle_delivery(ctx: dict[str, Any], delivery_id: str) -> list[str]:
    """The job of one GitHub delivery (job id `delivery:<guid>`): the ids of the runs it started."""
    services: Services = ctx["services"]
    await services.refresh_routines()
    github = services.github
    ack = Acknowledger(github, services.store, services.settings.run_url) if github else None
    deps = DeliveryDeps(services.store, services.pool, lambda: services.catalog.all().values(), ack)
    if github is not None:
        app = GitHubApp(github)

        async def changed_files(event: str, payload: JSON) -> list[str]:
            repo, number = event_repo(payload), pull_number(event, payload)
            installation = (payload.get("installation") or {}).get("id")
            if repo is None or number is None or not isinstance(installation, int):
                raise ForgeError("the event names no repository, pull request and installation")
            token = await app.token(installation, repo, {"pull_requests": "read"})
            return await app.pull_files(repo, number, token)

        async def permission(repo: str, login: str, payload: JSON) -> str:
            installation = (payload.get("installation") or {}).get("id")
            if not isinstance(installation, int):
                raise ForgeError("the event names no installation")
            return await app.permission(repo, login, await app.token(installation, repo, {"metadata": "read"}))

        deps.changed_files = changed_files
        deps.permission = permission
    runs = await process_delivery(deps, delivery_id)
    return [run.id for run in runs]
