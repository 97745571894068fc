"""The arq worker: runs jobs, owns its resources from startup to shutdown."""

from __future__ import annotations

import logging
from typing import Any

from arq import Worker
from arq.worker import func

from app import queue
from app.config import Settings
from app.domain import Event, RunState
from app.errors import RoutinesError
from app.runner import execute
from app.services import Services, build

log = logging.getLogger(__name__)


async def run_routine(ctx: dict[str, Any], run_id: str) -> str:
    """The job boundary: whatever happens, the run ends in a terminal state with a reason."""
    services: Services = ctx["services"]
    try:
        run = await execute(run_id, await services.runner_deps())
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


def create_worker(settings: Settings, *, handle_signals: bool = True, burst: bool = False) -> Worker:
    """An arq Worker whose startup builds the Services and whose shutdown closes them."""
    if settings.redis_url is None:
        raise ValueError("create_worker needs settings.redis_url")

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["services"] = await build(settings)

    async def shutdown(ctx: dict[str, Any]) -> None:
        services: Services | None = ctx.get("services")
        if services is not None:
            await services.close()

    return Worker(
        functions=[func(run_routine, name=queue.RUN_JOB, max_tries=1)],
        redis_settings=queue.redis_settings(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        poll_delay=settings.poll_delay_ms / 1000,
        max_jobs=settings.max_jobs,
        job_timeout=settings.job_timeout_s,
        keep_result=3600,
        job_serializer=queue.dumps,
        job_deserializer=queue.loads,
        handle_signals=handle_signals,
        burst=burst,
    )
