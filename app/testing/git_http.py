"""Git smart HTTP for the GitHub test server, served by the real `git http-backend` CGI.

The request body streams into the CGI and its output streams back; gzip request bodies pass
through untouched (http-backend inflates them itself). Access follows GitHub: HTTP Basic with
an installation token as the password (`x-access-token:<token>`), contents:read to fetch and
contents:write to push, on a token scoped to that repository.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from app.testing.github_state import ApiError, GitHubState

SERVICES = ("git-upload-pack", "git-receive-pack")
_CHUNK = 64 * 1024


def git_endpoint(state: GitHubState) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint for `/{owner}/{name}.git/{path}` backed by the repositories of `state`."""

    async def endpoint(request: Request) -> Response:
        owner, name, path = (request.path_params[key] for key in ("owner", "name", "path"))
        service = request.query_params.get("service") if path == "info/refs" else path
        if service not in SERVICES:
            return PlainTextResponse("Not Found\n", status_code=404)
        level = "write" if service == "git-receive-pack" else "read"
        try:
            state.authorize(basic_password(request), f"{owner}/{name}", "contents", level)
        except ApiError as exc:
            return _refusal(exc, level)
        return await run_http_backend(request, state.root, f"/{owner}/{name}.git/{path}")

    return endpoint


def basic_password(request: Request) -> str | None:
    """The password of an HTTP Basic `Authorization` header (any user name), or None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, sep, password = decoded.partition(":")
    return password if sep and password else None


def _refusal(exc: ApiError, level: str) -> Response:
    if exc.status == 401:
        return PlainTextResponse(
            "Invalid username or token. Password authentication is not supported for Git operations.\n",
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="GitHub"'},
        )
    if exc.status == 403 and level == "write":
        return PlainTextResponse("Write access to repository not granted.\n", status_code=403)
    return PlainTextResponse("Repository not found.\n", status_code=404)


async def run_http_backend(request: Request, project_root: Path, path_info: str) -> Response:
    """Run `git http-backend` for one request and stream its answer; pushes are enabled."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(project_root),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_PROJECT_ROOT": str(project_root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": request.method,
        "PATH_INFO": path_info,
        "QUERY_STRING": request.url.query,
        "CONTENT_TYPE": request.headers.get("content-type", ""),
        "REMOTE_USER": "x-access-token",
        "REMOTE_ADDR": request.client.host if request.client else "127.0.0.1",
    }
    for header, variable in (
        ("content-length", "CONTENT_LENGTH"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ):
        if header in request.headers:
            env[variable] = request.headers[header]
    proc = await asyncio.create_subprocess_exec(
        "git", "-c", "http.receivepack=true", "http-backend",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )  # fmt: skip
    feeder = asyncio.create_task(_feed(request, proc))
    try:
        status, headers = await _read_cgi_headers(proc)
    except BaseException:
        await _finish(proc, feeder)
        raise
    return _CgiResponse(status, headers, _stream(proc, feeder))


async def _feed(request: Request, proc: asyncio.subprocess.Process) -> None:
    stdin = proc.stdin
    if stdin is None:
        return
    try:
        async for chunk in request.stream():
            if chunk:
                stdin.write(chunk)
                await stdin.drain()
    except (BrokenPipeError, ConnectionResetError, ClientDisconnect):
        pass  # the backend answered without reading everything, or the client went away
    finally:
        stdin.close()


async def _read_cgi_headers(proc: asyncio.subprocess.Process) -> tuple[int, list[tuple[str, str]]]:
    if proc.stdout is None:
        raise RuntimeError("git http-backend has no stdout")
    status, headers = 200, []
    while line := (await proc.stdout.readline()).decode("latin-1").rstrip("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "status":
            status = int(value.strip().split()[0])
        else:
            headers.append((key.strip(), value.strip()))
    return status, headers


async def _stream(proc: asyncio.subprocess.Process, feeder: asyncio.Task[None]) -> AsyncGenerator[bytes, None]:
    try:
        if proc.stdout is not None:
            while chunk := await proc.stdout.read(_CHUNK):
                yield chunk
    finally:
        await _finish(proc, feeder)


async def _finish(proc: asyncio.subprocess.Process, feeder: asyncio.Task[None]) -> None:
    if proc.returncode is None and proc.stdout is not None and not proc.stdout.at_eof():
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.wait()
    feeder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await feeder


class _CgiResponse(Response):
    """Streams the CGI output without listening for disconnects: the body feeder owns `receive`."""

    def __init__(self, status: int, headers: list[tuple[str, str]], chunks: AsyncGenerator[bytes, None]) -> None:
        self.status_code = status
        self.background = None
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self._chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await self._chunks.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
