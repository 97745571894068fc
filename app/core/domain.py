"""Plain data of the domain: routines, triggers, runs, events. Standard library only."""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

JSON = dict[str, Any]


class RunState(enum.StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    FINISHING = "finishing"
    SUCCEEDED = "succeeded"
    NO_CHANGES = "no_changes"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {RunState.SUCCEEDED, RunState.NO_CHANGES, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT}
)

# queued → preparing → running → finishing → terminal; any live state may end early.
_FORWARD = {
    RunState.QUEUED: {RunState.PREPARING},
    RunState.PREPARING: {RunState.RUNNING},
    RunState.RUNNING: {RunState.FINISHING},
    RunState.FINISHING: set(),
}


def can_transition(current: RunState, new: RunState) -> bool:
    """Whether a run may move from `current` to `new`; terminal states are final."""
    if current.terminal:
        return False
    if new in _FORWARD[current]:
        return True
    if new in (RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT):
        return True
    return current is RunState.FINISHING and new in (RunState.SUCCEEDED, RunState.NO_CHANGES)


@dataclass(frozen=True)
class Limits:
    max_turns: int = 60
    max_minutes: float = 30.0
    max_cost_usd: float = 5.0
    runs_per_day: int | None = None


@dataclass(frozen=True)
class Schedule:
    cron: str
    timezone: str = "UTC"


@dataclass(frozen=True)
class Concurrency:
    group: str | None = None
    cancel_in_progress: bool = False


@dataclass(frozen=True)
class Connector:
    name: str
    url: str
    secret: str | None = None


@dataclass(frozen=True)
class Environment:
    """Where a run's commands run and what is ready before the agent starts.

    `image`: an OCI image reference whose filesystem becomes the sandbox's root (None: the worker's own
    system, read-only, as without an environment). `setup`: shell commands run in the sandbox before the
    agent's first turn. `cache`: repository files whose contents key the saved result of the setup.
    `env`: variables set in the sandbox. `devcontainer`: take all of these, at run time, from the
    repository's `.devcontainer/devcontainer.json`. `credentials`: the vault secret (`user:password` or
    a token) that logs in to the image's registry.
    """

    image: str | None = None
    setup: tuple[str, ...] = ()
    cache: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    devcontainer: bool = False
    credentials: str | None = None


@dataclass(frozen=True)
class Triggers:
    schedule: tuple[Schedule, ...] = ()
    api: bool = True
    github: dict[str, JSON] = field(default_factory=dict)


def is_local_repo(repo: str) -> bool:
    """A local path (the local forge) rather than a GitHub `owner/name`."""
    return repo.startswith(("/", "./", "../", "~")) or repo in (".", "..")


@dataclass(frozen=True)
class Routine:
    """One routine: a prompt, a repository, the policy it runs under, and its triggers.

    `repo` is `owner/name` (GitHub), a local path (local forge), `"*"` or a list of repos.
    """

    name: str
    repo: str | tuple[str, ...]
    prompt: str
    description: str = ""
    base: str | None = None
    on: Triggers = field(default_factory=Triggers)
    model: str = "claude-sonnet-4-6"
    tools: tuple[str, ...] = ("bash", "edit")
    network_allow: tuple[str, ...] = ()
    network_defaults: bool = True
    secrets: tuple[str, ...] = ()
    connectors: tuple[Connector, ...] = ()
    permissions: dict[str, str] = field(
        default_factory=lambda: {"contents": "write", "pull_requests": "write", "metadata": "read"}
    )
    outputs: JSON = field(default_factory=lambda: {"pull_request": {"draft": True}})
    limits: Limits = field(default_factory=Limits)
    concurrency: Concurrency = field(default_factory=Concurrency)
    environment: Environment | None = None
    source: str | None = None

    @property
    def repos(self) -> tuple[str, ...]:
        return (self.repo,) if isinstance(self.repo, str) else self.repo


@dataclass(frozen=True)
class Trigger:
    """What fired a run. `text` is the caller's input, given to the model as data."""

    kind: str  # api | schedule | github | cli
    text: str | None = None
    actor: str | None = None
    data: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return asdict(self)

    @classmethod
    def from_json(cls, data: JSON) -> Trigger:
        return cls(
            kind=str(data["kind"]),
            text=data.get("text"),
            actor=data.get("actor"),
            data=dict(data.get("data") or {}),
        )


@dataclass
class PullRequest:
    number: int
    url: str


@dataclass
class Run:
    """One execution of a routine. Serialised as JSON in the store."""

    id: str
    routine: str
    repo: str
    trigger: Trigger
    state: RunState = RunState.QUEUED
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    branch: str | None = None
    pull_request: PullRequest | None = None
    cost_usd: float = 0.0
    usage: dict[str, int] = field(default_factory=dict)
    turns: int = 0
    error: str | None = None
    summary: str | None = None
    incomplete: bool = False
    outputs: JSON = field(default_factory=dict)
    archived: str | None = None  # the file its event log was exported to, once retention trimmed it from Redis

    def to_json(self) -> JSON:
        data = asdict(self)
        data["state"] = self.state.value
        data["trigger"] = self.trigger.to_json()
        return data

    @classmethod
    def from_json(cls, data: JSON) -> Run:
        pr = data.get("pull_request")
        return cls(
            id=data["id"],
            routine=data["routine"],
            repo=data["repo"],
            trigger=Trigger.from_json(data["trigger"]),
            state=RunState(data["state"]),
            created_at=float(data["created_at"]),
            updated_at=float(data["updated_at"]),
            branch=data.get("branch"),
            pull_request=PullRequest(**pr) if pr else None,
            cost_usd=float(data.get("cost_usd") or 0.0),
            usage=dict(data.get("usage") or {}),
            turns=int(data.get("turns") or 0),
            error=data.get("error"),
            summary=data.get("summary"),
            incomplete=bool(data.get("incomplete")),
            outputs=dict(data.get("outputs") or {}),
            archived=data.get("archived"),
        )


def new_run_id() -> str:
    """A sortable, unguessable run id: milliseconds since the epoch, then 8 random hex digits."""
    return f"{int(time.time() * 1000):013x}{secrets.token_hex(4)}"


def run_branch(routine: str, run_id: str) -> str:
    """The only kind of branch a run ever pushes."""
    return f"routines/{routine}/{run_id}"


@dataclass(frozen=True)
class Event:
    """One entry of a run's append-only event log.

    `id` is the stream id given by the store ("" before it is appended).
    Types: run.state, model.request, model.turn, model.retry, tool.call, tool.result,
    output.pull_request, output.branch, run.limit, run.error, context.cleared, context.compacted,
    egress.allowed, egress.denied, sandbox.warning, log.
    """

    type: str
    data: JSON
    ts: float = field(default_factory=time.time)
    id: str = ""

    def to_json(self) -> JSON:
        return {"id": self.id, "type": self.type, "ts": self.ts, "data": self.data}
