"""The GitHub App manifest flow on the test server: the form GitHub receives, and the code conversion.

`POST /settings/apps/new?state=…` (or `/organizations/{org}/settings/apps/new`) takes the form field
`manifest` and redirects to its `redirect_url` with `code` and `state`, as GitHub does once the user
confirms. `POST /app-manifests/{code}/conversions` (no authentication) answers the App with `pem`,
`webhook_secret`, `client_id` and `client_secret`: the test server's own App id and key, so the
credentials work against it. A code works once, for an hour.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from app.testing.github_shapes import iso
from app.testing.github_state import ApiError, GitHubState

CODE_TTL_S = 3600


class ManifestApi:
    """Codes handed out by the form, by code: (manifest, issued at)."""

    def __init__(self, state: GitHubState) -> None:
        self.state = state
        self.codes: dict[str, tuple[dict[str, Any], float]] = {}

    async def new_app(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode())
        try:
            manifest = json.loads(form["manifest"][0])
        except (KeyError, ValueError):
            raise ApiError(422, "Invalid manifest: the form needs a `manifest` field holding JSON") from None
        if not isinstance(manifest, dict) or not manifest.get("url") or not manifest.get("redirect_url"):
            raise ApiError(422, "Invalid manifest: `url` and `redirect_url` are required")
        code = secrets.token_hex(10)
        self.codes[code] = (manifest, time.time())
        query = {"code": code, **({"state": request.query_params["state"]} if "state" in request.query_params else {})}
        return RedirectResponse(f"{manifest['redirect_url']}?{urlencode(query)}", status_code=302)

    async def convert(self, request: Request) -> Response:
        found = self.codes.pop(request.path_params["code"], None)
        if found is None or found[1] + CODE_TTL_S < time.time():
            raise ApiError(404, "Not Found")
        manifest, _ = found
        now = iso(time.time())
        slug = self.state.app_slug
        app = {
            "id": self.state.app_id,
            "slug": slug,
            "node_id": f"A_{slug}",
            "owner": {"login": "octocat", "type": "User"},
            "name": manifest.get("name") or slug,
            "description": manifest.get("description") or "",
            "external_url": manifest["url"],
            "html_url": f"{self.state.base_url}/apps/{slug}",
            "created_at": now,
            "updated_at": now,
            "permissions": manifest.get("default_permissions") or {},
            "events": manifest.get("default_events") or [],
            "client_id": f"Iv1.{secrets.token_hex(8)}",
            "client_secret": secrets.token_hex(20),
            "webhook_secret": secrets.token_hex(20),
            "pem": self.state.private_key,
        }
        return JSONResponse(app, status_code=201)


def manifest_routes(state: GitHubState) -> list[Route]:
    api = ManifestApi(state)
    return [
        Route("/settings/apps/new", api.new_app, methods=["POST"]),
        Route("/organizations/{org}/settings/apps/new", api.new_app, methods=["POST"]),
        Route("/app-manifests/{code}/conversions", api.convert, methods=["POST"]),
    ]
