"""One exception tree. Every message names the thing that is wrong and how to fix it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.core.domain import Run


class RoutinesError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(RoutinesError):
    """A setting is missing or malformed."""


class RoutineFileError(RoutinesError):
    """A routine file is wrong; `str()` is `file:line: what is wrong — how to fix`."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


class RoutineNotFound(RoutinesError):
    pass


class RoutineConflict(RoutinesError):
    """A change kept in Redis would touch a routine that is a file (files are changed on disk)."""


class RunNotFound(RoutinesError):
    pass


class NotAllowed(RoutinesError):
    """A caller named something its trigger may not reach (another repository, another routine's run)."""


class StoreError(RoutinesError):
    """Redis is unreachable or answered something unexpected."""


class InvalidTransition(RoutinesError):
    pass


class ForgeError(RoutinesError):
    """The code host refused or failed a request."""


class CommentsRefused(ForgeError):
    """The forge refused a review because of its inline comments (a line outside the diff)."""


class WorkspaceError(RoutinesError):
    """A git operation on a mirror or a workspace failed."""


class ModelError(RoutinesError):
    """The model API failed after retries, or answered something unusable."""


class PromptTooLong(ModelError):
    """The API refused the request as longer than the model's context window (a 400)."""


class SandboxError(RoutinesError):
    """The sandbox could not start or run a command."""


class ToolError(RoutinesError):
    """A tool call was invalid; the message goes back to the model as an error result."""


class RunLimitReached(RoutinesError):
    """A run hit one of its limits. `limit` names it (max_turns, max_minutes, max_cost_usd)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class RunStopped(RoutinesError):
    """The model stopped without finishing (refusal, context window); the message says why."""


class Refused(RoutinesError):
    """A run was not started because of `limit` (paused, archived, runs_per_day, max_runs_per_day).

    `status` is the HTTP answer (409 for a state, 429 for a quota); `run` is the refused run, recorded as
    cancelled, when there is one.
    """

    def __init__(self, limit: str, status: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.status = status
        self.run: Run | None = None
