"""The webhook path on 127.0.0.1: the test GitHub sending signed deliveries to a real web process.

    with webhook_stack(tmp, redis_url, routines_dir=folder) as hooks:
        hooks.github.add_repo("acme/api", hooks.installation)
        guid = hooks.send("issues", payload)     # signed, recorded in github.hook_deliveries
        runs = hooks.drain()                     # a burst worker handles the queued deliveries

`drain` runs `handle_delivery` jobs only; run jobs are taken off the queue without running an
agent (the run records stay `queued`), so tests see exactly which runs a delivery started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arq import Worker
from arq.worker import func

from app.core.config import Settings
from app.core.domain import Run
from app.services import build
from app.store import queue
from app.store.runs import RedisStore
from app.testing.github_hooks import deliver
from app.testing.github_server import GitHubState
from app.testing.github_server import create_app as github_app
from app.testing.serve import Served, free_port, serve_in_thread
from app.triggers.intake import DELIVERY_JOB, DeliveryPump
from app.worker.jobs import handle_delivery

SECRET = "test-webhook-secret"


async def _leave_run_queued(ctx: dict[str, Any], run_id: str) -> str:
    return "left queued"


@dataclass
class HookStack:
    settings: Settings
    github: GitHubState
    web_url: str
    installation: int
    web: Served | None = None

    def stop_web(self) -> None:
        """Stop the web process as a SIGTERM would (uvicorn's graceful shutdown)."""
        if self.web is not None:
            self.web.stop()

    @property
    def hook_url(self) -> str:
        return f"{self.web_url}/webhooks/github"

    def send(self, event: str, payload: dict[str, Any], guid: str | None = None) -> str:
        """Deliver `payload` as GitHub would (signed with the stack's secret); returns the GUID."""
        return deliver(self.github, event, payload, self.hook_url, self.settings.github_webhook_secret or "", guid)

    def drain(self) -> list[Run]:
        """Handle every queued delivery with a burst worker; returns all runs in the store, oldest first."""
        return asyncio.run(self._drain())

    async def _drain(self) -> list[Run]:
        settings = self.settings
        pool = queue.connect(settings.redis_url or "")
        try:
            await DeliveryPump(pool).drain()  # what each worker's pump does, once
        finally:
            await pool.aclose()

        async def startup(ctx: dict[str, Any]) -> None:
            ctx["services"] = await build(settings)

        async def shutdown(ctx: dict[str, Any]) -> None:
            await ctx["services"].close()

        worker = Worker(
            functions=[func(handle_delivery, name=DELIVERY_JOB), func(_leave_run_queued, name=queue.RUN_JOB)],
            redis_settings=queue.redis_settings(settings.redis_url or ""),
            on_startup=startup,
            on_shutdown=shutdown,
            burst=True,
            poll_delay=0.02,
            handle_signals=False,
            job_serializer=queue.dumps,
            job_deserializer=queue.loads,
        )
        try:
            await worker.main()
        finally:
            await worker.close()
        pool = queue.connect(settings.redis_url or "")
        try:
            return list(reversed(await RedisStore(pool).list_runs(limit=1000)))
        finally:
            await pool.aclose()


@contextmanager
def webhook_stack(root: Path, redis_url: str, *, routines_dir: Path, **overrides: Any) -> Iterator[HookStack]:
    """Start the test GitHub (one installation for `acme`) and a web process with a webhook secret, served
    as `routines web` serves it."""
    from app.web.app import create_app

    with ExitStack() as stack:
        github = GitHubState(root / "github")
        served = stack.enter_context(serve_in_thread(github_app(github)))
        github.base_url = served.url
        installation = github.add_installation("acme")
        port = free_port()
        fields: dict[str, Any] = {
            "redis_url": redis_url,
            "github_api_url": served.url,
            "github_app_id": str(github.app_id),
            "github_app_private_key": github.private_key,
            "github_webhook_secret": SECRET,
            "routines_dir": routines_dir,
            "data_dir": root / "data",
            "public_url": f"http://127.0.0.1:{port}",
            **overrides,
        }
        settings = Settings(**fields)
        web = stack.enter_context(serve_in_thread(create_app(settings), port=port, http="httptools"))
        yield HookStack(settings, github, web.url, installation, web)
