"""`outputs.notify`: post a run's outcome to Slack-compatible incoming webhooks whose URLs are vault secrets.

A target is written `slack:SECRET_NAME`; the secret's value is the webhook URL (Slack, Mattermost,
Rocket.Chat and Discord's `/slack` endpoints take the same `{"text": ...}` body). Notifying is best
effort: every failure is logged and returned, never raised, and no URL is ever logged or returned
(the URL is the credential).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from app.core.domain import Run, RunState
from app.core.ports import SecretLookup

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 3000  # Slack truncates longer messages; keep the outcome readable
MAX_REASON_CHARS = 200
_STATE_WORDS = {
    RunState.SUCCEEDED: "succeeded",
    RunState.NO_CHANGES: "finished with no changes",
    RunState.FAILED: "failed",
    RunState.CANCELLED: "was cancelled",
    RunState.TIMED_OUT: "timed out",
}


@dataclass(frozen=True)
class Notified:
    """What became of one target: `ok`, or `reason` (safe to show: never the URL)."""

    target: str
    ok: bool
    reason: str = ""


async def notify(
    targets: Sequence[str],
    text: str,
    secret: SecretLookup,
    *,
    timeout_s: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[Notified]:
    """Post `text` to each `slack:SECRET_NAME` target; the secret's value (from `secret`, the vault) is the URL."""
    results: list[Notified] = []
    async with httpx.AsyncClient(timeout=timeout_s, transport=transport, follow_redirects=False) as client:
        for target in targets:
            result = await _post(client, target, text[:MAX_TEXT_CHARS], secret)
            if not result.ok:
                log.warning("notification to %s failed: %s", target, result.reason)
            results.append(result)
    return results


async def _post(client: httpx.AsyncClient, target: str, text: str, secret: SecretLookup) -> Notified:
    kind, _, name = target.partition(":")
    if kind != "slack" or not name:
        return Notified(target, False, "not slack:SECRET_NAME; write the target like slack:ENG_WEBHOOK")
    try:
        url = (await secret.get(name)).value
    except Exception as exc:  # a vault failure must not fail the run
        return Notified(target, False, f"secret {name} could not be read ({type(exc).__name__})")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        return Notified(target, False, f"secret {name} is not a webhook URL; set it to the https:// URL of the webhook")
    try:
        response = await client.post(url, json={"text": text})
    except httpx.TimeoutException:
        return Notified(target, False, "the webhook did not answer in time")
    except httpx.HTTPError as exc:
        return Notified(target, False, f"the webhook is unreachable ({type(exc).__name__})")
    if response.status_code >= 300:
        said = " ".join(response.text.split())[:MAX_REASON_CHARS]
        return Notified(target, False, f"the webhook answered {response.status_code} ({said or 'no body'})")
    return Notified(target, True)


def outcome_text(run: Run, run_url: str, links: Sequence[tuple[str, str]] = ()) -> str:
    """One Slack message (mrkdwn) saying how `run` ended, with links to what it delivered and to the run.

    `links` are (label, URL) pairs of other outputs, e.g. ("review of #12", review_url).
    """
    state = _STATE_WORDS.get(run.state, run.state.value)
    lines = [f"Routine *{_plain(run.routine)}* on `{_plain(run.repo)}` {state}."]
    if run.pull_request is not None:
        label = "incomplete draft PR" if run.incomplete else "draft PR"
        lines.append(f"<{run.pull_request.url}|{label} #{run.pull_request.number}>")
    lines += [f"<{url}|{_plain(label)}>" for label, url in links]
    if run.error:
        lines.append(f"Error: {_plain(run.error)[: MAX_REASON_CHARS * 2]}")
    elif run.summary:
        first = (run.summary.strip().splitlines() or [""])[0]
        lines.append(_plain(first)[:MAX_REASON_CHARS])
    lines.append(f"<{run_url}|run {run.id}> · {run.turns} turns · ${run.cost_usd:.4f}")
    return "\n".join(lines)


def _plain(text: str) -> str:
    """`text` with Slack's control characters escaped, so it cannot forge links or mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
