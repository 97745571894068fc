"""Notifications to Slack-compatible webhooks whose URLs are secrets: delivered, or logged and returned."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from app.core.domain import PullRequest, Run, RunState, Trigger
from app.run.notify import notify, outcome_text
from app.testing.serve import serve_in_thread
from app.testing.slack_server import SlackState, create_app
from tests.support.secrets import Vault


@dataclass
class Slack:
    state: SlackState
    url: str


@pytest.fixture
def slack() -> Iterator[Slack]:
    state = SlackState()
    with serve_in_thread(create_app(state)) as served:
        yield Slack(state, served.url)
        state.release()


def a_run(**fields: object) -> Run:
    run = Run(id="0190abc", routine="nightly", repo="acme/api", trigger=Trigger(kind="api"), turns=7, cost_usd=0.1234)
    for name, value in fields.items():
        setattr(run, name, value)
    return run


async def test_posts_the_text_to_each_webhook(slack: Slack) -> None:
    eng, ops = slack.state.add_hook(slack.url), slack.state.add_hook(slack.url)
    results = await notify(["slack:ENG", "slack:OPS"], "Run finished", Vault({"ENG": eng, "OPS": ops}))
    assert [(r.target, r.ok) for r in results] == [("slack:ENG", True), ("slack:OPS", True)]
    assert slack.state.texts() == ["Run finished", "Run finished"]
    assert {path for path, _ in slack.state.messages} == {eng.split("/services/")[1], ops.split("/services/")[1]}


async def test_failures_are_returned_and_logged_without_the_url(slack: Slack, caplog: pytest.LogCaptureFixture) -> None:
    good = slack.state.add_hook(slack.url)
    archived = slack.state.add_hook(slack.url)
    slack.state.fail[archived.split("/services/")[1]] = 410
    gone = f"{slack.url}/services/T0/B0/revoked-hook-secret"
    secrets = {"GOOD": good, "ARCHIVED": archived, "GONE": gone, "BAD": "not a url", "DOWN": "http://127.0.0.1:9/x"}
    targets = ["slack:MISSING", "slack:BAD", "slack:GONE", "slack:ARCHIVED", "slack:DOWN", "email:x", "slack:GOOD"]
    with caplog.at_level(logging.WARNING, logger="app.run.notify"):
        results = await notify(targets, "outcome", Vault(secrets))
    reasons = {r.target: r.reason for r in results if not r.ok}
    assert "secret MISSING could not be read" in reasons["slack:MISSING"]
    assert "not a webhook URL" in reasons["slack:BAD"]
    assert "404 (no_service)" in reasons["slack:GONE"]
    assert "410 (channel_is_archived)" in reasons["slack:ARCHIVED"]
    assert "unreachable" in reasons["slack:DOWN"]
    assert "slack:SECRET_NAME" in reasons["email:x"]
    assert [r.target for r in results if r.ok] == ["slack:GOOD"] and slack.state.texts() == ["outcome"]
    logged = caplog.text
    assert len(caplog.records) == 6
    for url in (good, archived, gone, "127.0.0.1:9", slack.url):
        assert url not in logged and all(url not in r for r in reasons.values())


async def test_a_webhook_that_never_answers_times_out(slack: Slack) -> None:
    url = slack.state.add_hook(slack.url)
    slack.state.hang.add(url.split("/services/")[1])
    [result] = await notify(["slack:SLOW"], "x", Vault({"SLOW": url}), timeout_s=0.2)
    assert not result.ok and result.reason == "the webhook did not answer in time"


def test_outcome_text_links_the_pr_and_the_run_and_escapes_control_characters() -> None:
    run = a_run(
        state=RunState.SUCCEEDED, pull_request=PullRequest(12, "https://gh/acme/api/pull/12"), summary="Fix <b>"
    )
    text = outcome_text(run, "https://routines/runs/0190abc", [("review of #3", "https://gh/acme/api/pull/3#r")])
    assert "Routine *nightly* on `acme/api` succeeded." in text
    assert (
        "<https://gh/acme/api/pull/12|draft PR #12>" in text and "<https://gh/acme/api/pull/3#r|review of #3>" in text
    )
    assert "Fix &lt;b&gt;" in text and "<https://routines/runs/0190abc|run 0190abc> · 7 turns · $0.1234" in text
    failed = outcome_text(a_run(state=RunState.FAILED, error="max_turns <@channel>", incomplete=True), "u")
    assert "failed." in failed and "Error: max_turns &lt;@channel&gt;" in failed
