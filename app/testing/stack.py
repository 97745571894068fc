"""A whole Routines installation on 127.0.0.1: test GitHub, test Anthropic, web and worker.

Used by the end-to-end tests and the benchmarks; users can drive their own routines through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.core.config import Settings
from app.core.domain import TERMINAL_STATES
from app.testing.anthropic_server import AnthropicState
from app.testing.anthropic_server import create_app as anthropic_app
from app.testing.github_server import GitHubState
from app.testing.github_server import create_app as github_app
from app.testing.serve import free_port, serve_in_thread

API_TOKEN = "test-admin-token"
MODEL_KEY = "sk-ant-test-key-0123456789"


class WorkerThread:
    """An arq worker on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._main, daemon=True, name="routines-worker")

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        from app.worker.worker import close_worker, create_worker

        worker = create_worker(self.settings, handle_signals=False)
        self._task = asyncio.current_task()
        try:
            self._ready.set()
            await worker.main()
        except asyncio.CancelledError:
            pass
        finally:
            self._closing = True
            # this task was cancelled to stop the worker; close_worker passes a job's cancellation on then
            with contextlib.suppress(asyncio.CancelledError):
                await close_worker(worker)

    def start(self) -> WorkerThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        """Cancel the worker, and again every second until it begins to close. Once in CI a worker went on
        polling after its cancellation (Python 3.11's wait_for, for one, can lose a cancellation that lands
        as the awaited call completes), took the next tests' jobs from the same database and failed 36 of
        them. Its closing is not interrupted."""
        deadline = time.monotonic() + 30
        while self._thread.is_alive() and time.monotonic() < deadline:
            task = self._task
            if task is not None and not self._closing:
                self._loop.call_soon_threadsafe(task.cancel)
            self._thread.join(timeout=1)
        if self._thread.is_alive():
            raise RuntimeError("the worker did not stop within 30 s of being cancelled; a job ignores cancellation")


@dataclass
class Stack:
    settings: Settings
    github: GitHubState
    anthropic: AnthropicState
    web_url: str
    installation: int
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def process_env(self) -> dict[str, str]:
        """The environment under which another process (`python -m app worker`) gets this stack's settings."""
        s = self.settings
        return {
            **os.environ,
            "REDIS_URL": s.redis_url or "",
            "GITHUB_API_URL": s.github_api_url,
            "GITHUB_APP_ID": s.github_app_id or "",
            "GITHUB_APP_PRIVATE_KEY": s.github_app_private_key or "",
            "ANTHROPIC_API_KEY": s.anthropic_api_key or "",
            "ANTHROPIC_BASE_URL": s.anthropic_base_url or "",
            "ROUTINES_DIR": str(s.routines_dir),
            "ROUTINES_DATA_DIR": str(s.data_dir),
            "ROUTINES_PUBLIC_URL": s.public_url,
            "ROUTINES_API_TOKEN": s.api_token or "",
            "ROUTINES_SANDBOX": s.sandbox,
            "ROUTINES_POLL_DELAY_MS": str(s.poll_delay_ms),
            "ROUTINES_COMMAND_TIMEOUT_S": str(s.command_timeout_s),
            "ROUTINES_LEASE_S": str(s.lease_s),
            "ROUTINES_REAPER_S": str(s.reaper_s),
        }

    def fire(self, routine: str, text: str | None = None, token: str = API_TOKEN) -> httpx.Response:
        body: dict[str, Any] = {"text": text} if text is not None else {}
        return self.client.post(
            f"{self.web_url}/api/routines/{routine}/fire", json=body, headers={"authorization": f"Bearer {token}"}
        )

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {API_TOKEN}", **kwargs.pop("headers", {})}
        return self.client.get(f"{self.web_url}{path}", headers=headers, **kwargs)

    def wait(self, run_id: str, timeout_s: float = 60) -> dict[str, Any]:
        """Poll the run until it is terminal; returns the run JSON (fails loudly if it never ends)."""
        deadline = time.monotonic() + timeout_s
        terminal = {s.value for s in TERMINAL_STATES}
        started, last = time.monotonic(), "never read"
        while time.monotonic() < deadline:
            answer = self.get(f"/api/runs/{run_id}")
            if answer.status_code == 200:
                run: dict[str, Any] = answer.json()
                if run["state"] in terminal:
                    return run
                last = f"state {run['state']}"
            else:  # e.g. 429 from the API's rate limit on a long wait
                last = f"HTTP {answer.status_code}: {answer.text[:200]}"
            time.sleep(0.05 if time.monotonic() - started < 2 else 0.25)
        raise TimeoutError(f"run {run_id} did not finish in {timeout_s} s; last read: {last}")

    def events(self, run_id: str) -> list[dict[str, Any]]:
        data: dict[str, Any] = self.get(f"/api/runs/{run_id}/events", headers={"accept": "application/json"}).json()
        events: list[dict[str, Any]] = data["events"]
        return events


@contextmanager
def running_stack(
    root: Path, redis_url: str, *, routines_dir: Path, worker: bool = True, **overrides: Any
) -> Iterator[Stack]:
    """Start the test GitHub (one installation for `acme`), the test Anthropic, web and a worker."""
    from app.web.app import create_app

    with ExitStack() as stack:
        github = GitHubState(root / "github")
        gh = stack.enter_context(serve_in_thread(github_app(github)))
        github.base_url = gh.url
        installation = github.add_installation("acme")
        anthropic = AnthropicState()
        web_port = free_port()
        model = stack.enter_context(serve_in_thread(anthropic_app(anthropic)))
        defaults: dict[str, Any] = {"poll_delay_ms": 20, "command_timeout_s": 30, "api_token": API_TOKEN}
        settings = Settings(
            redis_url=redis_url,
            github_api_url=gh.url,
            github_app_id=str(github.app_id),
            github_app_private_key=github.private_key,
            anthropic_api_key=MODEL_KEY,
            anthropic_base_url=model.url,
            routines_dir=routines_dir,
            data_dir=root / "data",
            public_url=f"http://127.0.0.1:{web_port}",
            **{**defaults, **overrides},
        )
        web = stack.enter_context(serve_in_thread(create_app(settings), port=web_port, http="httptools"))
        if worker:
            stack.callback(WorkerThread(settings).start().stop)
        yield Stack(settings, github, anthropic, web.url, installation)
