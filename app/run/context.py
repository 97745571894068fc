"""What a run is given (RunnerDeps) and what it carries between phases (RunContext)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from app.agent.loop import AgentOutcome
from app.core.domain import JSON, Event, Routine, Run
from app.core.metrics import NoMetrics
from app.core.ports import (
    Boundary,
    Checkout,
    Credentials,
    Emit,
    Forge,
    ForgeOutputs,
    Images,
    MemoryStore,
    Metrics,
    ModelClient,
    Place,
    PullInfo,
    Redacts,
    RepoInfo,
    SecretLookup,
    Store,
    Workspaces,
)
from app.run.meter import RunMeter
from app.run.starts import Start, Starts


class Price(Protocol):
    def __call__(self, model: str, usage: dict[str, int]) -> float:
        """The price in dollars of `usage` (the four token counts, web searches) on `model`."""
        ...


class CodeHosts(Protocol):
    """Where a run's repository lives: the forge of a repository, what that forge can deliver (reviews,
    issues; None for a local forge), and the mirrors and checkouts."""

    @property
    def workspaces(self) -> Workspaces: ...

    def forge_for(self, repo: str) -> Forge: ...

    def outputs_for(self, forge: Forge) -> ForgeOutputs | None: ...


class Sandboxes(Protocol):
    """Opens one run's boundary: its sandbox, egress proxy and placeholders."""

    async def open(
        self, run_id: str, routine: Routine, run_dir: Path, emit: Emit, redactor: Redacts, place: Place | None = None
    ) -> Boundary: ...

    async def unpack(self, folder: Path) -> int | None:
        """Unpack `folder/exchange/stash.tar` into `folder/work` and `folder/home` in a sandbox of its own."""
        ...


@dataclass(frozen=True)
class RunSettings:
    """Where runs work (`work_dir/<run>`), how a run's page is linked, how long one command may take."""

    work_dir: Path
    run_url: Callable[[str], str]
    command_timeout_s: float = 600.0
    setups_dir: Path | None = None  # saved results of environments' setups (None: never saved)
    setup_cache_bytes: int = 10 * 1024**3


@dataclass(frozen=True)
class Reporting:
    """How a run tells about itself: a redactor that knows the process's secrets, a cancel flag to poll,
    and, once it ended, its tracking comment (`on_finished`) and notifications (`notify`)."""

    redactor: Callable[[], Redacts]
    cancel_check: Callable[[str], Callable[[], Awaitable[bool]]] | None = None
    on_finished: Callable[[Run], Awaitable[None]] | None = None
    notify: Callable[[Routine, Run, list[tuple[str, str]]], Awaitable[list[JSON]]] | None = None


@dataclass(frozen=True)
class RunnerDeps:
    """Everything a run touches, passed in (services.py builds the real ones)."""

    store: Store
    routine: Callable[[str], Routine]
    code: CodeHosts
    sandboxes: Sandboxes
    model: ModelClient
    price: Price
    settings: RunSettings
    reporting: Reporting
    memory_store: MemoryStore | None = None
    connector_secret: SecretLookup | None = None
    metrics: Metrics = field(default_factory=NoMetrics)
    images: Images | None = None
    starts: Starts = field(default_factory=Starts)
    """The starts under way in this worker (app.run.starts): one per process, shared by its runs."""


class RunEvents:
    """The EventSink of one run: appends to its log in the store, with every known secret redacted, and
    has the run's `meter` count what each recorded event says (and the run's `start` end at its first
    model request)."""

    def __init__(self, store: Store, run_id: str, redactor: Redacts, meter: RunMeter | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.redactor = redactor
        self.meter = meter
        self.start: Start | None = None  # set by the runner once the run is known to be live

    async def emit(self, type: str, data: JSON) -> None:
        data = self.redactor.redact(data)
        await self.store.append_event(self.run_id, Event(type, data))
        if self.meter is not None:
            self.meter.saw(type, data)
        if self.start is not None:
            self.start.saw(type, data)


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
    fresh_after: float = 0.0
    """The repository is fetched after this (wall-clock seconds): the later of the fire and the job's enqueue."""
    history: list[Event] | None = None
    """The event log before this attempt, when the run is being resumed after its worker died."""
    skipped: list[JSON] = field(default_factory=list)
    """Files the final snapshot left out (too big, not UTF-8 names), with why."""
    snapshot_error: str | None = None
    """Why the final snapshot failed, if it did: the run then delivers its last checkpoint and fails."""
