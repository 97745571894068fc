"""The web process: app factory and lifespan. It answers fast and never runs agents."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from app.core.config import Settings
from app.core.errors import StoreError
from app.core.logs import configure_logging
from app.services import Services, build
from app.web import api, routines_api, secrets_api, setup, webhooks
from app.web.console import actions as console_actions
from app.web.console import pages as console_pages
from app.web.metrics import routes as metrics_routes

log = logging.getLogger(__name__)


def from_environment() -> Starlette:
    """The app of one of several web processes (`routines web --processes N`, which uvicorn starts by this
    name): settings from the environment, log lines formatted and redacted as in `routines web`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.own_secrets())
    return create_app(settings)


def create_app(settings: Settings, services: Services | None = None) -> Starlette:
    """The ASGI app. Resources are built in the lifespan unless `services` is given (then not closed).

    The lifespan state holds `services` and `webhook` (the app's `GitHubWebhook`)."""
    webhook = webhooks.GitHubWebhook()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if services is not None:
            yield {"services": services, "webhook": webhook}
            return
        built = await build(settings, check_redis=False)
        try:
            await built.store.ping()
            link = await setup.setup_link(built)
            if link is not None:
                log.warning("no GitHub App is set up yet; to create one, open the one-time setup link %s", link)
        except (StoreError, RedisError, OSError) as exc:
            log.warning("%s; answering 503 until it is back", exc)
        if settings.api_token is None:
            log.warning(
                "ROUTINES_API_TOKEN is not set: run logs and the API's reads are open to anyone who can connect"
            )
        try:
            yield {"services": built, "webhook": webhook}
        finally:
            await built.close()

    async def store_down(request: Request, exc: Exception) -> Response:
        message = str(exc) if isinstance(exc, StoreError) else f"Redis is unreachable ({exc}); retry later"
        return JSONResponse({"error": message}, status_code=503, headers={"retry-after": "5"})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return JSONResponse({"error": detail}, status_code=status)

    return Starlette(
        routes=[
            *api.routes,
            *routines_api.routes,
            *secrets_api.routes,
            *setup.routes,
            *console_pages.routes,
            *console_actions.routes,
            Mount("/static", StaticFiles(packages=[("app.web", "static")]), name="static"),
            *metrics_routes,
            Route(webhooks.PATH, webhook, methods=["POST"]),
        ],
        middleware=[Middleware(webhooks.WebhookFirst, webhook=webhook)],
        lifespan=lifespan,
        exception_handlers={StoreError: store_down, RedisError: store_down, HTTPException: http_error},
    )
