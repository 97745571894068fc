"""Acknowledge a GitHub event on GitHub: an 👀 reaction, and one tracking comment per run, edited with its outcome.

Each run owns its own comment (its id kept under `routines:tracking:<run_id>`), so parallel runs
never overwrite each other's. Acknowledging is best effort: a GitHub failure is logged and never
fails the delivery or the run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from app.core.domain import JSON, Run, RunState, Trigger
from app.core.errors import ForgeError
from app.forge.github import GitHubForge
from app.forge.github_app import GitHubApp
from app.store.runs import RedisStore

log = logging.getLogger(__name__)

ACK_EVENTS = frozenset(
    {"issues", "issue_comment", "pull_request", "pull_request_review", "pull_request_review_comment"}
)
TRACKING_TTL_S = 30 * 86400
MAX_REASON_CHARS = 500


def tracking_key(run_id: str) -> str:
    return f"routines:tracking:{run_id}"


def _permission(data: JSON) -> dict[str, str]:
    return {"pull_requests": "write"} if data.get("is_pull_request") else {"issues": "write"}


def _reaction_path(data: JSON) -> str:
    if data.get("event") == "issue_comment" and data.get("comment_id"):
        return f"issues/comments/{data['comment_id']}"
    if data.get("event") == "pull_request_review_comment" and data.get("comment_id"):
        return f"pulls/comments/{data['comment_id']}"
    return f"issues/{data['number']}"


class Acknowledger:
    """Acknowledges deliveries through the App installation of the event's repository."""

    def __init__(self, forge: GitHubForge, store: RedisStore, run_url: Callable[[str], str]) -> None:
        self.app = GitHubApp(forge)
        self.store = store
        self.run_url = run_url

    async def acknowledge(self, trigger: Trigger, runs: list[Run], refusals: list[tuple[str, str]]) -> None:
        """React 👀 once, then comment once per started run (and once per refusal, saying why)."""
        data = trigger.data
        if data.get("event") not in ACK_EVENTS or not data.get("number") or not data.get("installation_id"):
            return
        repo, number = str(data["repo"]), int(data["number"])
        try:
            token = await self.app.token(int(data["installation_id"]), repo, _permission(data))
            await self.app.react(repo, _reaction_path(data), token)
            for run in runs:
                if await self.store.redis.exists(tracking_key(run.id)):
                    continue  # a retried job: this run has its comment already
                body = f"👀 Routine `{run.routine}` started [run `{run.id}`]({self.run_url(run.id)})."
                comment_id = await self.app.comment(repo, number, body, token)
                record = {"repo": repo, "number": number, "comment_id": comment_id, **_ids(data)}
                await self.store.redis.set(tracking_key(run.id), json.dumps(record), ex=TRACKING_TTL_S)
            for routine, reason in refusals:
                await self.app.comment(repo, number, f"Routine `{routine}` did not start: {_cut(reason)}", token)
        except ForgeError as exc:
            log.warning("could not acknowledge delivery %s on %s#%s: %s", data.get("delivery"), repo, number, exc)


def _ids(data: JSON) -> JSON:
    return {"installation_id": data["installation_id"], "is_pull_request": bool(data.get("is_pull_request"))}


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def outcome_text(run: Run, url: str) -> str:
    """The tracking comment's body for `run` in its current state."""
    link = f"[run `{run.id}`]({url})"
    name = f"Routine `{run.routine}`"
    if run.state is RunState.SUCCEEDED and run.pull_request is not None:
        return f"✅ {name} opened draft pull request #{run.pull_request.number}: {run.pull_request.url} ({link})."
    if run.state is RunState.SUCCEEDED:
        return f"✅ {name} finished ({link})."
    if run.state is RunState.NO_CHANGES:
        return f"{name} finished with no changes ({link})."
    if run.state in (RunState.FAILED, RunState.TIMED_OUT):
        what = "timed out" if run.state is RunState.TIMED_OUT else "failed"
        pr = f" Partial work: draft pull request #{run.pull_request.number}." if run.pull_request else ""
        return f"❌ {name} {what}: {_cut(run.error or 'no reason recorded')}.{pr} ({link})"
    if run.state is RunState.CANCELLED:
        return f"{name} was cancelled ({link})."
    return f"👀 {name} is {run.state.value} ({link})."


async def update_tracking_comment(forge: GitHubForge, store: RedisStore, run: Run, run_url: str) -> bool:
    """Edit `run`'s tracking comment to say how it ended; False when it has none or GitHub refused."""
    raw = await store.redis.get(tracking_key(run.id))
    if raw is None:
        return False
    record = json.loads(raw)
    app = GitHubApp(forge)
    try:
        token = await app.token(int(record["installation_id"]), record["repo"], _permission(record))
        await app.update_comment(record["repo"], int(record["comment_id"]), outcome_text(run, run_url), token)
    except ForgeError as exc:
        log.warning("could not update the tracking comment of run %s: %s", run.id, exc)
        return False
    return True
