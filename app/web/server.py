"""How the web process is served: uvicorn's public `Config`, with uvloop and the httptools parser.

Every request, `POST /webhooks/github` included, goes the ASGI way through Starlette's router, so
uvicorn can be upgraded without reading its internals. More deliveries per second come from more web
processes behind the same address (bench/webhook_ack.py measures one and two).
"""

from __future__ import annotations

from typing import Any

import uvicorn


def options(**extra: Any) -> dict[str, Any]:
    """uvicorn's settings for the web process (`routines web`, `routines dev`, the benchmark): uvloop and
    httptools, and no logging config of uvicorn's own, so its lines pass through the root handlers,
    which redact."""
    return {"loop": "uvloop", "http": "httptools", "log_config": None, **extra}


def config(app: Any, host: str, port: int, **extra: Any) -> uvicorn.Config:
    """A uvicorn Config of one web process serving `app`."""
    return uvicorn.Config(app, host=host, port=port, **options(**extra))
