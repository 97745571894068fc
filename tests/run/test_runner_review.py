"""A review routine's outputs on the test GitHub, phase by phase (tests/run/test_runner_review_stack.py runs it whole).

The real parts: the PR read from the test GitHub, its head checked out from a mirror, the final
message a model writes, the review with inline comments, the routine's report issue and a
notification to a Slack-compatible receiver.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.core.domain import Run, RunState, Trigger
from app.forge.github import GitHubForge
from app.forge.github_outputs import GitHubOutputs
from app.git.mirrors import Mirrors
from app.run.notify import notify, outcome_text
from app.run.outputs import deliver_report, deliver_review, review_context
from app.testing.github_server import GitHubState, create_app
from app.testing.serve import serve_in_thread
from app.testing.slack_server import SlackState
from app.testing.slack_server import create_app as slack_app
from tests.support.secrets import Vault

CALC = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
FEATURE = CALC + "\n\ndef div(a, b):\n    return a / b\n"


def final_message() -> str:
    """What the model ends a review run with: prose, then the ```review block of REVIEW_INSTRUCTIONS."""
    review = {
        "summary": "Adds `div`. One problem: division by zero is not handled.",
        "comments": [
            {"path": "calc.py", "line": 10, "body": "`b == 0` raises ZeroDivisionError; say what callers get."},
            {"path": "calc.py", "line": 2, "body": "Unchanged, but `add` has no test either."},
        ],
    }
    return "I read calc.py and ran the tests.\n\n```review\n" + json.dumps(review, indent=2) + "\n```"


@dataclass
class World:
    github: GitHubState
    slack: SlackState
    hook_url: str
    root: Path


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    github, slack = GitHubState(tmp_path / "github"), SlackState()
    with serve_in_thread(create_app(github)) as gh, serve_in_thread(slack_app(slack)) as hooks:
        github.base_url = gh.url
        installation = github.add_installation("acme")
        source = tmp_path / "src"
        source.mkdir()
        (source / "calc.py").write_text(CALC)
        github.add_repo("acme/calc", installation, source_dir=source)
        github.commit_files("acme/calc", "add-div", {"calc.py": FEATURE}, "Add div")
        yield World(github, slack, slack.add_hook(hooks.url), tmp_path)
        slack.release()


async def test_review_routine_posts_inline_comments_reports_and_notifies(world: World) -> None:
    async with GitHubForge(world.github.base_url, str(world.github.app_id), world.github.private_key) as forge:
        repo = await forge.resolve("acme/calc")
        creds = await forge.credentials(repo, {"contents": "read", "pull_requests": "write", "issues": "write"})
        pr = await forge.open_pull_request(
            repo, head="add-div", base="main", title="Add div", body="", draft=False, creds=creds
        )
        outputs = GitHubOutputs(forge)

        # workspace phase: a review run checks out the pull request's head, not the base
        pull = await outputs.read_pull(repo, pr.number, creds)
        mirrors = Mirrors(world.root / "data", spares=False)
        mirror = await mirrors.ensure(repo.clone_url, creds)
        checkout = await mirrors.checkout(mirror, pull.head_ref, world.root / "run" / "repo")
        assert (checkout.path / "calc.py").read_text() == FEATURE
        context = review_context(pull)
        assert f"BASE is {pull.base_sha}" in context and "- calc.py (modified)" in context

        # deliver phase: no push, a review; then the report issue and the notification
        result = await deliver_review(outputs, repo, pr.number, final_message(), creds, footer="Routine `review-prs`")
        assert checkout.changed_files() == []
        report = await deliver_report(
            outputs, repo, "review-prs", f"Reviewed #{pr.number}", f"Review: {result.url}", creds
        )

    [review] = world.github.reviews("acme/calc")
    assert review["state"] == "COMMENTED" and review["commit_id"] == pull.head_sha
    assert [(c["path"], c["line"], c["side"]) for c in review["comments"]] == [("calc.py", 10, "RIGHT")]
    assert "ZeroDivisionError" in review["comments"][0]["body"]
    assert review["body"].startswith("Adds `div`.") and "`calc.py` line 2: Unchanged" in review["body"]
    assert (result.inline, result.moved) == (1, 1)
    [issue] = world.github.issues("acme/calc")
    assert issue["number"] == report.number and issue["labels"] == ["routines-report"]
    assert world.github.pulls("acme/calc")[0]["head"]["sha"] == pull.head_sha  # nothing was pushed

    run = Run(id="r1", routine="review-prs", repo="acme/calc", trigger=Trigger(kind="github"), state=RunState.SUCCEEDED)
    text = outcome_text(run, "http://routines/runs/r1", [(f"review of #{pr.number}", result.url)])
    [sent] = await notify(["slack:REVIEWS_HOOK"], text, Vault({"REVIEWS_HOOK": world.hook_url}))
    assert sent.ok and f"|review of #{pr.number}>" in world.slack.texts()[0]
