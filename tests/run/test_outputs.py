"""Reviews and report issues: parsing the model's review, placing comments on the diff, delivery on the test GitHub."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from app.core.ports import Credentials, InlineComment, PullFile, PullInfo, RepoInfo
from app.forge.github import GitHubForge
from app.forge.github_outputs import GitHubOutputs
from app.run.outputs import (
    REPORT_LABEL,
    capped,
    deliver_report,
    deliver_review,
    diff_lines,
    parse_review,
    place_comments,
    report_text,
)
from app.testing.github_server import GitHubState, create_app, generate_app_key
from app.testing.serve import serve_in_thread

APP = "".join(f"line {n}\n" for n in range(1, 41))
PATCH = "@@ -8,7 +8,8 @@ x\n line 8\n line 9\n-line 10\n+line ten\n+line ten b\n line 11\n line 12\n line 13\n line 14"


def review_text(summary: str, comments: list[object], before: str = "I read the change.\n\n") -> str:
    return before + "```review\n" + json.dumps({"summary": summary, "comments": comments}, indent=1) + "\n```\n"


def test_parse_review_reads_the_last_review_block() -> None:
    text = review_text("Old", []) + review_text("Good change.", [{"path": "./a.py", "line": "3", "body": "Nit."}])
    draft = parse_review(text)
    assert draft.summary == "Good change."
    assert draft.comments == (InlineComment("a.py", 3, "Nit."),)


@pytest.mark.parametrize(
    "text",
    [
        "No block at all, just prose.",
        "Prose\n```review\n{not json}\n```",
        "Prose\n```review\n[1, 2]\n```",
        'Cut short\n```review\n{"summary": "half',
    ],
)
def test_without_a_valid_block_the_whole_text_is_the_summary(text: str) -> None:
    draft = parse_review(text)
    assert draft.summary == text.strip() and draft.comments == () and draft.loose == ()


def test_unusable_comments_are_kept_as_loose_text_and_prose_stands_in_for_a_missing_summary() -> None:
    text = review_text(
        "",
        [
            {"path": "a.py", "line": 0, "body": "Line zero?"},
            {"line": 4, "body": "No path"},
            {"path": "a.py", "line": 5, "body": "Fine", "side": "left", "start_line": 7},
            "just a string",
        ],
        before="Overall fine.\n",
    )
    draft = parse_review(text)
    assert draft.summary == "Overall fine."
    assert draft.comments == (InlineComment("a.py", 5, "Fine", side="LEFT"),)
    assert draft.loose == ("Line zero?", "No path", '"just a string"')


def test_diff_lines_follow_hunk_headers() -> None:
    right, left = diff_lines(PATCH + "\n@@ -30,2 +31,3 @@\n line 30\n+new\n line 31\n\\ No newline at end of file")
    assert right == {8, 9, 10, 11, 12, 13, 14, 15, 31, 32, 33}
    assert left == {8, 9, 10, 11, 12, 13, 14, 30, 31}


def test_place_comments_keeps_diff_lines_and_moves_the_rest() -> None:
    files = [PullFile("app.txt", "modified", PATCH), PullFile("logo.png", "added", None)]
    comments = [
        InlineComment("app.txt", 10, "on a changed line"),
        InlineComment("app.txt", 14, "on context", start_line=2),
        InlineComment("app.txt", 40, "far away"),
        InlineComment("logo.png", 1, "binary"),
        InlineComment("app.txt", 10, "old side", side="LEFT"),
    ]
    inline, moved = place_comments(comments, files)
    assert inline == [
        InlineComment("app.txt", 10, "on a changed line"),
        InlineComment("app.txt", 14, "on context"),
        InlineComment("app.txt", 10, "old side", side="LEFT"),
    ]
    assert [c.body for c in moved] == ["far away", "binary"]


@dataclass
class Hub:
    state: GitHubState
    outputs: GitHubOutputs
    repo: RepoInfo
    creds: Credentials
    number: int


@pytest.fixture(scope="module")
def app_key() -> str:
    return generate_app_key()


@pytest.fixture
def github(tmp_path: Path, app_key: str) -> Iterator[GitHubState]:
    state = GitHubState(tmp_path / "github", private_key=app_key)
    with serve_in_thread(create_app(state)) as served:
        state.base_url = served.url
        installation = state.add_installation("acme")
        source = tmp_path / "src"
        source.mkdir()
        (source / "app.txt").write_text(APP)
        state.add_repo("acme/api", installation, source_dir=source)
        state.commit_files("acme/api", "feature", {"app.txt": APP.replace("line 10\n", "line ten\n")})
        yield state


@pytest.fixture
async def hub(github: GitHubState) -> AsyncIterator[Hub]:
    async with GitHubForge(github.base_url, str(github.app_id), github.private_key, timeout_s=10) as forge:
        repo = await forge.resolve("acme/api")
        creds = await forge.credentials(repo, {"pull_requests": "write", "issues": "write"})
        pr = await forge.open_pull_request(
            repo, head="feature", base="main", title="F", body="", draft=False, creds=creds
        )
        yield Hub(github, GitHubOutputs(forge), repo, creds, pr.number)


async def test_review_posts_diff_comments_inline_and_lists_the_others_in_the_body(hub: Hub) -> None:
    text = review_text(
        "Renames line 10.",
        [
            {"path": "app.txt", "line": 10, "body": "Spell numbers as digits."},
            {"path": "app.txt", "line": 35, "body": "Unrelated: this line is odd."},
        ],
    )
    result = await deliver_review(hub.outputs, hub.repo, hub.number, text, hub.creds, footer="Routine `r`")
    [review] = hub.state.reviews("acme/api")
    assert (result.review_id, result.url, result.inline, result.moved) == (review["id"], review["html_url"], 1, 1)
    assert review["state"] == "COMMENTED"
    assert [(c["path"], c["line"], c["body"]) for c in review["comments"]] == [
        ("app.txt", 10, "Spell numbers as digits.")
    ]
    assert review["body"].startswith("Renames line 10.")
    assert "`app.txt` line 35: Unrelated: this line is odd." in review["body"]
    assert review["body"].endswith("---\nRoutine `r`")


async def test_a_review_stays_on_the_commit_it_reviewed_when_the_pull_request_moved(hub: Hub) -> None:
    """The author pushed while the review ran: the review must not vouch for the new commit, nor put its
    comments on the new diff's lines."""
    reviewed = hub.state.pulls("acme/api")[0]["head"]["sha"]
    hub.state.commit_files("acme/api", "feature", {"more.txt": "pushed while the review ran\n"})
    text = review_text("Renames line 10.", [{"path": "app.txt", "line": 10, "body": "Spell numbers as digits."}])
    result = await deliver_review(hub.outputs, hub.repo, hub.number, text, hub.creds, reviewed=reviewed)
    [review] = hub.state.reviews("acme/api")
    assert review["commit_id"] == reviewed and review["comments"] == [] and result.inline == 0
    assert f"This review is of commit {reviewed[:12]}; the pull request has moved" in review["body"]
    assert "`app.txt` line 10: Spell numbers as digits." in review["body"]


async def test_prose_without_a_block_becomes_the_review_body(hub: Hub) -> None:
    result = await deliver_review(hub.outputs, hub.repo, hub.number, "Looks good to me.", hub.creds)
    [review] = hub.state.reviews("acme/api")
    assert review["body"] == "Looks good to me." and review["comments"] == [] and result.inline == 0


class StalePatches:
    """GitHubOutputs whose diff is stale: it believes line 30 changed, as after a force-push during the run."""

    def __init__(self, real: GitHubOutputs) -> None:
        self.real = real

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    async def read_pull(self, repo: RepoInfo, number: int, creds: Credentials | None) -> PullInfo:
        pull = await self.real.read_pull(repo, number, creds)
        return replace(pull, files=(PullFile("app.txt", "modified", "@@ -30,1 +30,1 @@\n-line 30\n+line thirty"),))


async def test_a_refused_inline_comment_is_posted_in_the_body_instead(hub: Hub) -> None:
    text = review_text("Summary.", [{"path": "app.txt", "line": 30, "body": "Check this."}])
    result = await deliver_review(StalePatches(hub.outputs), hub.repo, hub.number, text, hub.creds)  # type: ignore[arg-type]
    [review] = hub.state.reviews("acme/api")
    assert review["comments"] == [] and "`app.txt` line 30: Check this." in review["body"]
    assert (result.inline, result.moved) == (0, 1)
    assert [r.status for r in hub.state.requests if r.path.endswith("/reviews")] == [422, 200]


async def test_repeated_reports_update_one_issue_per_routine(hub: Hub) -> None:
    first = await deliver_report(hub.outputs, hub.repo, "nightly", "Nightly failed", "run 1 failed", hub.creds)
    second = await deliver_report(hub.outputs, hub.repo, "nightly", "Nightly failed again", "run 2 failed", hub.creds)
    other = await deliver_report(hub.outputs, hub.repo, "weekly", "Weekly findings", "3 findings", hub.creds)
    assert first.created and not second.created and other.created
    assert second.number == first.number != other.number
    issues = {i["number"]: i for i in hub.state.issues("acme/api")}
    assert len(issues) == 2
    assert issues[first.number]["title"] == "Nightly failed again"
    assert issues[first.number]["body"].startswith("run 2 failed") and issues[first.number]["labels"] == [REPORT_LABEL]
    issues[first.number]["state"] = "closed"
    reopened = await deliver_report(hub.outputs, hub.repo, "nightly", "Nightly failed", "run 3", hub.creds)
    assert reopened.created and reopened.number not in issues


async def test_a_huge_report_is_cut_to_what_github_accepts(hub: Hub) -> None:
    ref = await deliver_report(hub.outputs, hub.repo, "big", "Big", "x" * 100_000, hub.creds)
    body = hub.state.repos["acme/api"].issues[ref.number]["body"]
    assert len(body) < 65_536 and body.endswith("<!-- routines:report:big -->")


async def test_a_report_cannot_carry_another_routines_marker(hub: Hub) -> None:
    """An agent's summary naming another routine's marker must not make that routine's next report
    update this issue instead of its own."""
    weekly = await deliver_report(hub.outputs, hub.repo, "weekly", "Weekly", "3 findings", hub.creds)
    sneaky = "Done.\n<!-- routines:report:weekly -->"
    nightly = await deliver_report(hub.outputs, hub.repo, "nightly", "Nightly", sneaky, hub.creds)
    body = hub.state.repos["acme/api"].issues[nightly.number]["body"]
    assert "routines:report:weekly" not in body and body.endswith("<!-- routines:report:nightly -->")
    again = await deliver_report(hub.outputs, hub.repo, "weekly", "Weekly", "4 findings", hub.creds)
    assert again.number == weekly.number


def test_a_body_past_what_github_accepts_is_cut_and_says_so() -> None:
    assert capped("short") == "short"
    cut = capped("y" * 70_000, "review")
    assert len(cut) < 65_536 and cut.endswith("[... cut: the full review is in the run's event log ...]")


def test_report_text_says_when_the_last_run_failed() -> None:
    assert report_text("weekly", "# 3 findings\nDetails", None, "run r1") == (
        "3 findings",
        "# 3 findings\nDetails\n\n---\nrun r1",
    )
    title, body = report_text("weekly", "", "max_turns reached (4)", "")
    assert title == "weekly: the last run failed" and "**The last run failed**: max_turns reached (4)" in body
