"""The seams: small Protocols the core takes as arguments. Implementations don't inherit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.core.domain import JSON, Event, PullRequest, Run, RunState
from app.core.metrics import Counter, Histogram


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


MODEL_ANSWERING: ContextVar[Callable[[], None] | None] = ContextVar("model_answering", default=None)
"""What a ModelClient calls once the model has a request and has begun to answer it (a streamed answer's
headers arrived, or a whole answer did): the runner ends the run's start there (app.run.starts)."""


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


@dataclass(frozen=True)
class StageLimits:
    """What one snapshot of a work tree may hold: bigger files and content past the total are left out."""

    max_file_bytes: int = 100 * 1024 * 1024
    max_total_bytes: int = 1024**3
    max_files: int = 500_000


@dataclass
class Staged:
    """A work tree staged inside the sandbox: its tree id, file count, and what was left out and why."""

    tree: str
    files: int = 0
    skipped: list[JSON] = field(default_factory=list)


class TreeSource(Protocol):
    """Stages a work tree where it lives and hands out the git objects it made (checked by their ids)."""

    async def stage(self, base: str, seed: bytes | None, limits: StageLimits) -> Staged:
        """Stage every change since commit `base`; `seed` is an index with stat data of the checkout."""
        ...

    async def objects(self, oids: list[str], max_bytes: int, budget: int) -> list[tuple[str, int, bytes]]:
        """(id, git object type, raw data) of each tree or blob in `oids`, unverified: none over `max_bytes`,
        all together at most `budget` bytes (else WorkspaceError)."""
        ...


class Hands(Shell, TreeSource, Protocol):
    """One run's hands inside its sandbox: the persistent shell, the file editor, staging of the tree.

    Nothing here runs in the worker: the host only sends requests and reads bounded answers.
    """

    workdir: Path

    async def edit(self, params: JSON, max_characters: int | None = None) -> str:
        """Run one `str_replace_based_edit_tool` call where the files are; ToolError when refused."""
        ...

    async def stop(self) -> None:
        """End the shell and every process the agent started; editing and staging still work."""
        ...

    async def names(self) -> list[str]:
        """The work tree's top-level entries (`.git` aside)."""
        ...

    async def pack(self, created: list[str], max_bytes: int) -> int:
        """Save the setup's result (`created` top-level entries and $HOME) for the host to keep; bytes."""
        ...

    async def unpack(self) -> int:
        """Fill the work tree and $HOME from a saved setup; files."""
        ...

    async def ignore(self, names: list[str]) -> None:
        """Never stage these top-level entries of the work tree (what the setup made) in a snapshot."""
        ...


@dataclass(frozen=True)
class Place:
    """Where a run's commands run: an image's unpacked filesystem as `/` and the variables its config sets
    (None: the worker's own system, read-only), a folder kept as $HOME across shell restarts, and a folder
    only the hands process sees, through which a setup's result is saved and restored."""

    rootfs: Path | None = None
    env: tuple[tuple[str, str], ...] = ()
    home: Path | None = None
    exchange: Path | None = None


@dataclass(frozen=True)
class PulledImage:
    reference: str
    digest: str
    rootfs: Path
    env: tuple[tuple[str, str], ...]
    pulled: bool
    seconds: float


class Images(Protocol):
    """Where images come from: pulled once per digest, held by a run until released."""

    async def ensure(self, reference: str, login: str | None = None, *, holder: str | None = None) -> PulledImage:
        """The image, pulled if needed; raises SandboxError saying what to fix (unknown, refused, down, corrupt)."""
        ...

    def release(self, digest: str, holder: str) -> None: ...


class Sandbox(Protocol):
    """Where the agent's hands act. Never given a credential."""

    name: str

    async def hands(self, workdir: Path, env: dict[str, str]) -> Hands: ...


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


Emit = Callable[[str, JSON], Awaitable[None]]
"""One event into a run's log: `await emit(type, data)` (an EventSink's `emit`)."""


class StoredSecret(Protocol):
    """A secret as the vault keeps it: its value and the domains it may be sent to."""

    @property
    def value(self) -> str: ...

    @property
    def domains(self) -> tuple[str, ...]: ...


class SecretLookup(Protocol):
    """Where current secret values come from (the vault). `get` raises when the secret is gone."""

    async def get(self, name: str) -> StoredSecret: ...


class Secrets(SecretLookup, Protocol):
    """The vault as a run's boundary uses it: values, and the run's placeholders standing in for them."""

    async def placeholders(self, run_id: str, names: Sequence[str]) -> dict[str, str]:
        """A placeholder per name, fixed for the run and as long as the value (what the sandbox sees)."""
        ...


class Checkout(Protocol):
    """A run's working tree. The runner, never the agent, commits and pushes it.

    The host never reads the work tree: `snapshot` has the tree staged inside the sandbox and copies
    its git objects, checked against their ids. Everything after (changes, diff, commit, checkpoint)
    works on the last snapshot's tree, which is the base commit's until one is taken.
    """

    path: Path
    base_commit: str

    @property
    def tree(self) -> str:
        """The current tree's id."""
        ...

    async def snapshot(self, source: TreeSource, limits: StageLimits | None = None) -> Staged:
        """Stage the work tree through `source` and make its tree the current one."""
        ...

    def changed_files(self) -> list[str]: ...

    def diff(self) -> str: ...

    async def commit(self, message: str, author_name: str, author_email: str) -> str | None: ...

    async def push(self, url: str, branch: str, creds: Credentials | None, *, force: bool = True) -> None: ...

    def cleanup(self) -> None: ...

    async def checkpoint(self, ref: str) -> str | None:
        """Commit the current tree onto `ref`, outside the mirror (None: nothing changed since the last one)."""
        ...

    async def restore(self, commit: str | None, patch: str) -> str:
        """Bring back a checkpoint: its commit if this machine has it, else the patch; says which."""
        ...

    def base_file(self, path: str, max_bytes: int) -> bytes | None:
        """The file `path` of the base commit, read from git objects (None: no such regular file, or larger)."""
        ...

    def base_entry(self, path: str) -> str | None:
        """The git id and mode of `path` in the base commit (a file, folder, link or submodule), or None."""
        ...


class Workspaces(Protocol):
    """Per-repository mirrors and fresh checkouts made from them."""

    async def ensure(self, url: str, creds: Credentials | None, *, since: float | None = None) -> Path:
        """The mirror of `url`, fetched by a fetch that began at or after `since` (when the run was fired;
        default: this call)."""
        ...

    async def checkout(self, mirror: Path, base: str, dest: Path) -> Checkout: ...

    async def fetch_pull(self, mirror: Path, url: str, creds: Credentials | None, number: int, commit: str) -> None:
        """Make sure `mirror` has `commit`, the head of pull request `number` (fetched from GitHub's
        `refs/pull/<n>/head`, which holds a fork's commits too, when it does not); WorkspaceError if not."""
        ...

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


@dataclass(frozen=True)
class PullFile:
    """One file a pull request changes; `patch` is GitHub's unified diff hunks (None for binary or huge files)."""

    path: str
    status: str
    patch: str | None = None


@dataclass(frozen=True)
class PullInfo:
    number: int
    url: str
    head_ref: str
    head_sha: str
    base_ref: str
    base_sha: str
    files: tuple[PullFile, ...] = ()
    from_fork: bool = False
    """The head is in another repository (or one since deleted): its files are a stranger's."""


@dataclass(frozen=True)
class InlineComment:
    """A review comment on `line` (and from `start_line`) of `path`, on the new (RIGHT) or old (LEFT) side."""

    path: str
    line: int
    body: str
    side: str = "RIGHT"
    start_line: int | None = None


@dataclass(frozen=True)
class IssueRef:
    number: int
    url: str
    created: bool = False


class ForgeOutputs(Protocol):
    """What the forge must offer for reviews and report issues."""

    async def read_pull(self, repo: RepoInfo, number: int, creds: Credentials | None) -> PullInfo: ...

    async def post_review(
        self,
        repo: RepoInfo,
        number: int,
        *,
        commit_id: str,
        body: str,
        comments: Sequence[InlineComment],
        creds: Credentials | None,
    ) -> tuple[int, str]:
        """Post a COMMENT review; returns its id and URL. CommentsRefused when an inline comment is refused."""
        ...

    async def find_issue(self, repo: RepoInfo, label: str, marker: str, creds: Credentials | None) -> IssueRef | None:
        """The open issue labelled `label` whose body contains `marker`, if any."""
        ...

    async def create_issue(
        self, repo: RepoInfo, *, title: str, body: str, labels: Sequence[str], creds: Credentials | None
    ) -> IssueRef: ...

    async def update_issue(
        self, repo: RepoInfo, number: int, *, title: str, body: str, creds: Credentials | None
    ) -> IssueRef: ...


class MemoryStore(Protocol):
    """Where each routine's memory folder is kept between runs: relative path → file bytes."""

    async def load(self, routine: str) -> dict[str, bytes]: ...

    async def save(self, routine: str, files: dict[str, bytes]) -> None:
        """Replace the routine's stored folder with `files` (an empty dict clears it)."""
        ...


class Metrics(Protocol):
    """Where a process counts what it saw, for `GET /metrics` (app.core.metrics names every metric).

    Counting never waits and never raises: the counts reach the shared store in the background, and a
    store that is down delays them without failing the request or run that counted."""

    def count(self, metric: Counter, amount: float = 1, **labels: str) -> None: ...

    def observe(self, metric: Histogram, value: float, **labels: str) -> None: ...
