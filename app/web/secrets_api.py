"""Vault secrets over HTTP (admin token only). Values go in, never come out."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.store.vault import SecretInfo, SecretNotFound, Vault, VaultError
from app.web.api import bearer_token, error, is_admin, services_of

MAX_SECRET_BODY_BYTES = 64 * 1024


def _info(info: SecretInfo) -> dict[str, object]:
    return {"name": info.name, "domains": list(info.domains), "updated_at": info.updated_at}


def _vault(request: Request) -> Vault | Response:
    services = services_of(request)
    if services.settings.api_token is None:
        return error(403, "set ROUTINES_API_TOKEN to manage secrets over HTTP (or use `routines secrets`)")
    if not is_admin(services, bearer_token(request)):
        return error(401, "this needs ROUTINES_API_TOKEN as a bearer token")
    vault = services.vault()
    if vault is None:
        return error(503, "ROUTINES_SECRET_KEY is not set; set it to enable the vault")
    return vault


async def list_secrets(request: Request) -> Response:
    vault = _vault(request)
    if isinstance(vault, Response):
        return vault
    return JSONResponse({"secrets": [_info(i) for i in await vault.list()]})


async def put_secret(request: Request) -> Response:
    vault = _vault(request)
    if isinstance(vault, Response):
        return vault
    body = await request.body()
    if len(body) > MAX_SECRET_BODY_BYTES:
        return error(413, f"body is over {MAX_SECRET_BODY_BYTES} bytes")
    try:
        payload = json.loads(body)
    except ValueError:
        return error(400, 'body is not JSON; send {"value": "...", "domains": ["api.example.com"]}')
    value, domains = (payload.get("value"), payload.get("domains")) if isinstance(payload, dict) else (None, None)
    if not isinstance(value, str) or not value:
        return error(422, "`value` must be a non-empty string")
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        return error(422, '`domains` must be a list of host names such as ["sentry.io", "*.sentry.io"]')
    try:
        info = await vault.set(request.path_params["name"], value, domains)
    except VaultError as exc:
        return error(422, str(exc))
    return JSONResponse(_info(info))


async def delete_secret(request: Request) -> Response:
    vault = _vault(request)
    if isinstance(vault, Response):
        return vault
    try:
        deleted = await vault.delete(request.path_params["name"])
    except SecretNotFound:
        deleted = False
    if not deleted:
        return error(404, f"secret {request.path_params['name']!r} does not exist")
    return Response(status_code=204)


routes = [
    Route("/api/secrets", list_secrets),
    Route("/api/secrets/{name}", put_secret, methods=["PUT"]),
    Route("/api/secrets/{name}", delete_secret, methods=["DELETE"]),
]
