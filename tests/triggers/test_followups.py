"""Review feedback on a run's own draft PR: a follow-up run continues the conversation on the same branch and PR."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest

from app.routines.files import parse_routine
from app.testing.anthropic_server import Script, Turn, edit_create, text
from app.testing.github_hooks import deliver
from app.testing.stack import Stack, running_stack
from app.triggers.followups import follow_up
from tests.support.paths import PAYLOADS

SECRET = "webhook-secret-for-follow-ups"
PAYLOAD = json.loads((PAYLOADS / "pull_request_review_comment.created.json").read_text())
ROUTINE = "---\nname: docs-fix\nrepo: acme/docs\non:\n  api: true\n---\nWrite the docs. [script:docs]\n"


def review_comment(branch: str, number: int, body: str, **changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = copy.deepcopy(PAYLOAD)
    repo = {**payload["repository"], "full_name": "acme/docs", "name": "docs"}
    repo["owner"] = {**repo["owner"], "login": "acme"}
    payload.update(repository=repo, installation={"id": 1})
    pull = payload["pull_request"]
    pull.update(number=number, head={**pull["head"], "ref": branch, "repo": repo}, base={**pull["base"], "repo": repo})
    payload["comment"].update(body=body, author_association=changes.pop("association", "MEMBER"))
    payload["sender"] = {**payload["sender"], "login": "reviewer", "type": changes.pop("sender_type", "User")}
    return payload


@pytest.mark.parametrize(
    ("body", "changes", "expected"),
    [
        ("@routines please also add usage", {}, True),
        ("looks good", {}, False),  # no mention
        ("@routines do it", {"association": "CONTRIBUTOR"}, False),  # not trusted
        ("@routines do it", {"sender_type": "Bot"}, False),  # bots never trigger
        ("email@routines.dev", {}, False),  # not a mention
    ],
)
def test_which_review_comments_ask_for_a_follow_up(body: str, changes: dict[str, str], expected: bool) -> None:
    routines = {"docs-fix": parse_routine(ROUTINE, "docs-fix.md")}
    found = follow_up(
        "pull_request_review_comment", review_comment("routines/docs-fix/0a1b2c3d4e", 7, body, **changes), routines
    )
    assert (found is not None) is expected
    if found is not None:
        assert (found.routine.name, found.branch, found.parent_run, found.number) == (
            "docs-fix", "routines/docs-fix/0a1b2c3d4e", "0a1b2c3d4e", 7
        )  # fmt: skip
    other_branch = review_comment("feature/docs", 7, "@routines fix")
    assert follow_up("pull_request_review_comment", other_branch, routines) is None


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    folder = tmp_path / "routines"
    folder.mkdir()
    (folder / "docs-fix.md").write_text(ROUTINE)
    with running_stack(tmp_path, redis_url, routines_dir=folder, github_webhook_secret=SECRET) as s:
        s.github.add_repo("acme/docs", s.installation)
        s.github.repos["acme/docs"].collaborators["reviewer"] = "write"
        yield s


def test_a_review_comment_leads_to_a_follow_up_commit_on_the_same_pr(stack: Stack) -> None:
    stack.anthropic.add_script(
        Script(
            match="[script:docs]",
            turns=[
                Turn([edit_create("GUIDE.md", "# Guide\n")]),
                Turn([text("Add a guide\n\nWrote GUIDE.md.")]),
                Turn([edit_create("USAGE.md", "# Usage\n")]),
                Turn([text("Added USAGE.md as asked.")]),
            ],
        )
    )
    first = stack.wait(stack.fire("docs-fix").json()["run_id"])
    assert first["state"] == "succeeded", first["error"]
    branch, number = first["branch"], first["pull_request"]["number"]

    payload = review_comment(branch, number, "@routines please also add a usage page")
    payload["installation"] = {"id": stack.installation}
    deliver(stack.github, "pull_request_review_comment", payload, f"{stack.web_url}/webhooks/github", SECRET)
    deadline = time.monotonic() + 30
    runs: list[dict[str, Any]] = []
    while len(runs) < 2 and time.monotonic() < deadline:
        runs = stack.get("/api/runs?routine=docs-fix").json()["runs"]
        time.sleep(0.1)
    assert len(runs) == 2, "the review comment started no follow-up run"
    second = stack.wait(runs[0]["id"])

    assert second["state"] == "succeeded", second["error"]
    assert second["branch"] == branch and second["pull_request"]["number"] == number
    assert len(stack.github.pulls("acme/docs")) == 1
    repo = pygit2.Repository(str(stack.github.repos["acme/docs"].path))
    head = repo.revparse_single(f"refs/heads/{branch}").peel(pygit2.Commit)
    assert {"GUIDE.md", "USAGE.md"} <= {entry.name for entry in head.tree}
    assert len(head.parents) == 1 and head.parents[0].tree["GUIDE.md"] is not None  # a new commit on top
    request = stack.anthropic.requests[-2].body["messages"]
    assert "please also add a usage page" in json.dumps(request[-1]["content"])
    assert any(m["role"] == "assistant" for m in request[:-1])  # the first run's conversation goes on
