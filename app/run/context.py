"""What a run is given (RunnerDeps) and what it carries between phases (RunContext)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.agent.connectors import SecretLookup
from app.agent.loop import AgentOutcome
from app.agent.memory import MemoryStore
from app.core.domain import JSON, Event, Routine, Run
from app.core.ports import Boundary, Checkout, Credentials, Forge, ModelClient, Redacts, RepoInfo, Store, Workspaces
from app.run.outputs import ForgeOutputs, PullInfo


@dataclass
class RunnerDeps:
    """Everything a run touches, passed in (services.py builds the real ones, tests their own)."""

    store: Store
    routine: Callable[[str], Routine]
    forge_for: Callable[[str], Forge]
    workspaces: Workspaces
    boundary: Callable[[str, Routine, Path, Callable[[str, JSON], Awaitable[None]], Redacts], Awaitable[Boundary]]
    redactor: Callable[[], Redacts]
    model: ModelClient
    run_url: Callable[[str], str]
    work_dir: Path
    price: Callable[[str, dict[str, int]], float]
    command_timeout_s: float = 600.0
    on_finished: Callable[[Run], Awaitable[None]] | None = None
    memory_store: MemoryStore | None = None
    connector_secret: SecretLookup | None = None
    outputs_for: Callable[[Forge], ForgeOutputs | None] = lambda forge: None
    notify: Callable[[Routine, Run, list[tuple[str, str]]], Awaitable[list[JSON]]] | None = None
    cancel_check: Callable[[str], Callable[[], Awaitable[bool]]] | None = None


class RunEvents:
    """The EventSink of one run: appends to its log in the store, with every known secret redacted."""

    def __init__(self, store: Store, run_id: str, redactor: Redacts) -> None:
        self.store = store
        self.run_id = run_id
        self.redactor = redactor

    async def emit(self, type: str, data: JSON) -> None:
        await self.store.append_event(self.run_id, Event(type, self.redactor.redact(data)))


@dataclass
class RunContext:
    """What one run has learned so far, phase by phase."""

    run: Run
    routine: Routine
    events: RunEvents
    forge: Forge | None = None
    repo: RepoInfo | None = None
    creds: Credentials | None = None
    checkout: Checkout | None = None
    outcome: AgentOutcome | None = None
    denied: list[JSON] = field(default_factory=list)
    pull: PullInfo | None = None
    links: list[tuple[str, str]] = field(default_factory=list)
    history: list[Event] | None = None
    """The event log before this attempt, when the run is being resumed after its worker died."""
    skipped: list[JSON] = field(default_factory=list)
    """Files the final snapshot left out (too big, not UTF-8 names), with why."""
    snapshot_error: str | None = None
    """Why the final snapshot failed, if it did: the run then delivers its last checkpoint and fails."""
