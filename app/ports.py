"""The seams: small Protocols the core takes as arguments. Implementations don't inherit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.domain import JSON, Event, PullRequest, Run, RunState


@dataclass
class ModelResponse:
    """One assistant turn, as plain JSON-able data (Anthropic Messages shapes).

    `content` holds content blocks as dicts ({"type": "text", ...}, {"type": "tool_use", ...}).
    `usage` keys: input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens.
    """

    content: list[JSON]
    stop_reason: str | None
    usage: dict[str, int] = field(default_factory=dict)
    model: str = ""
    id: str = ""


class ModelClient(Protocol):
    async def create(
        self,
        *,
        model: str,
        system: list[JSON],
        messages: list[JSON],
        tools: list[JSON],
        max_tokens: int,
    ) -> ModelResponse:
        """Send one Messages request; retries on 429/5xx happen inside. Raises ModelError."""
        ...


@dataclass
class CommandResult:
    output: str
    exit_code: int | None  # None when the command was killed (timeout)
    timed_out: bool = False
    truncated: bool = False


class Shell(Protocol):
    """One persistent shell of a run: state (cwd, variables) survives between commands."""

    async def run(self, command: str, timeout_s: float) -> CommandResult: ...

    async def restart(self) -> None: ...

    async def close(self) -> None: ...


class Sandbox(Protocol):
    """Where the agent's commands execute. Never given a credential."""

    name: str

    async def shell(self, workdir: Path, env: dict[str, str]) -> Shell: ...


@dataclass(frozen=True)
class RepoInfo:
    """A repository as the forge describes it. `clone_url` is used as given."""

    full_name: str
    clone_url: str
    default_branch: str
    html_url: str = ""
    installation_id: int | None = None


@dataclass(frozen=True)
class Credentials:
    """What git needs to fetch and push; `password` is a short-lived token. Never logged."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<redacted>)"


class Forge(Protocol):
    """The code host: GitHub (App auth) or a local repository."""

    name: str

    async def resolve(self, repo: str) -> RepoInfo: ...

    async def credentials(self, repo: RepoInfo, permissions: dict[str, str]) -> Credentials | None:
        """A token scoped to this one repository and these permissions (None: none needed)."""
        ...

    async def find_pull_request(self, repo: RepoInfo, head: str, creds: Credentials | None) -> PullRequest | None:
        """The open PR whose head is branch `head`, if any."""
        ...

    async def open_pull_request(
        self,
        repo: RepoInfo,
        *,
        head: str,
        base: str,
        title: str,
        body: str,
        draft: bool,
        creds: Credentials | None,
    ) -> PullRequest: ...


class Store(Protocol):
    """Runs and their event logs (Redis in production)."""

    async def create_run(self, run: Run) -> None: ...

    async def get_run(self, run_id: str) -> Run: ...

    async def save_run(self, run: Run) -> None: ...

    async def transition(self, run_id: str, new: RunState, **fields: Any) -> Run: ...

    async def update(self, run_id: str, **fields: Any) -> Run: ...

    async def take_messages(self, run_id: str) -> list[str]: ...

    async def append_event(self, run_id: str, event: Event) -> str: ...

    async def events(self, run_id: str, after: str = "0-0") -> list[Event]: ...

    def follow(self, run_id: str, after: str = "0-0") -> AsyncIterator[Event]: ...


class EventSink(Protocol):
    """What the agent loop and runner record into: one run's event log."""

    async def emit(self, type: str, data: JSON) -> None: ...


class Checkout(Protocol):
    """A run's working tree. The runner, never the agent, commits and pushes it."""

    path: Path
    base_commit: str

    def changed_files(self) -> list[str]: ...

    def diff(self) -> str: ...

    async def commit(self, message: str, author_name: str, author_email: str) -> str | None: ...

    async def push(self, url: str, branch: str, creds: Credentials | None, *, force: bool = True) -> None: ...

    def cleanup(self) -> None: ...

    async def checkpoint(self, ref: str) -> str | None:
        """Snapshot the tree onto `ref` in the mirror (None: nothing changed since the last one)."""
        ...

    async def restore(self, commit: str | None, patch: str) -> str:
        """Bring back a checkpoint: its commit if the mirror has it, else the patch; says which."""
        ...


class Workspaces(Protocol):
    """Per-repository mirrors and fresh checkouts made from them."""

    async def ensure(self, url: str, creds: Credentials | None) -> Path: ...

    async def checkout(self, mirror: Path, base: str, dest: Path) -> Checkout: ...

    def discard(self, dest: Path) -> None:
        """Remove what a dead worker left of a checkout at `dest` on this machine."""
        ...


class Redacts(Protocol):
    """Replaces known secret values with their names."""

    def add(self, name: str, value: str) -> None: ...

    def text(self, text: str) -> str: ...

    def redact(self, data: Any) -> Any: ...


class Boundary(Protocol):
    """One run's sandbox and the network boundary around it."""

    sandbox: Sandbox
    env: dict[str, str]
    denied: list[JSON]

    async def close(self) -> None: ...
