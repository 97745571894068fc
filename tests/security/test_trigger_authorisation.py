"""A trigger runs only what its caller may name: the fire API's `repo`, follow-ups named by a branch, and
CI events from forks or from people without write access — each through the real web, worker and
test GitHub. Refused means: a 4xx (for the API) and no run at all."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.testing.anthropic_server import Script, Turn, edit_create, text
from app.testing.github_hooks import deliver
from app.testing.stack import Stack, running_stack
from app.triggers.intake import claim_key
from tests.support.paths import PAYLOADS

JSON = dict[str, Any]
SECRET = "webhook-secret-for-authorisation"
ROUTINES = {
    "fixer": "repo: acme/svc\non: {api: true}",
    "anywhere": "repo: '*'\non: {api: true}",
    "local": "repo: {local}\non: {api: true}",
    "ci-fix": "repo: acme/svc\non:\n  github:\n    workflow_run: {types: [completed], branches: [main]}",
    "docs": "repo: acme/docs\non: {api: true}",
}


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    local = tmp_path / "local-repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(local)], check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "init"],
        cwd=local,
        check=True,
    )
    folder = tmp_path / "routines"
    folder.mkdir()
    for name, front in ROUTINES.items():
        body = front.replace("{local}", str(local))
        (folder / f"{name}.md").write_text(f"---\nname: {name}\n{body}\n---\nWork. [script:{name}]\n")
    with running_stack(tmp_path, redis_url, routines_dir=folder, github_webhook_secret=SECRET) as s:
        for repo in ("acme/svc", "acme/docs", "acme/other"):
            s.github.add_repo(repo, s.installation)
        s.github.add_repo("stranger/lib", None)  # the App is not installed there
        s.github.repos["acme/svc"].collaborators["reviewer"] = "write"
        for name in ROUTINES:
            s.anthropic.add_script(
                Script(match=f"[script:{name}]", turns=[Turn([edit_create("A.md", "a\n")]), Turn([text("Done.")])])
            )
        yield s


def runs(stack: Stack) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = stack.get("/api/runs").json()["runs"]
    return found


def fire(stack: Stack, routine: str, repo: str) -> Any:
    return stack.client.post(
        f"{stack.web_url}/api/routines/{routine}/fire",
        json={"repo": repo},
        headers={"authorization": "Bearer test-admin-token"},
    )


def test_the_fire_api_takes_only_the_routines_own_repositories(stack: Stack, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    refused = [
        ("fixer", str(elsewhere)),  # a local path outside the routine
        ("fixer", "/"),
        ("fixer", "acme/other"),  # installed, but not the routine's
        ("fixer", "acme/svc/../other"),
        ("anywhere", str(elsewhere)),  # '*' means installed owner/name, never a path
        ("anywhere", "stranger/lib"),  # not installed
        ("local", str(elsewhere)),
        ("local", "acme/svc"),
    ]
    for routine, repo in refused:
        reply = fire(stack, routine, repo)
        assert reply.status_code == 403, (routine, repo, reply.text)
        assert "does not run on" in reply.json()["error"] or "cannot run on" in reply.json()["error"]
    assert runs(stack) == [], "a refused fire starts no run"

    for routine, repo in (("fixer", "ACME/svc"), ("anywhere", "acme/other"), ("local", str(tmp_path / "local-repo"))):
        reply = fire(stack, routine, repo)
        assert reply.status_code == 202, (routine, repo, reply.text)
    assert sorted(r["repo"] for r in runs(stack)) == sorted(["acme/svc", "acme/other", str(tmp_path / "local-repo")])


def review_comment(stack: Stack, branch: str, *, repo: str = "acme/svc", head_repo: str | None = None) -> JSON:
    payload: dict[str, Any] = json.loads((PAYLOADS / "pull_request_review_comment.created.json").read_text())
    repository = {**payload["repository"], "full_name": repo, "name": repo.split("/")[1]}
    head = {**repository, "full_name": head_repo or repo}
    pull = payload["pull_request"]
    pull.update(number=1, head={**pull["head"], "ref": branch, "repo": head}, base={**pull["base"], "repo": repository})
    payload["comment"].update(body="@routines please go on", author_association="MEMBER")
    payload.update(repository=repository, installation={"id": stack.installation})
    payload["sender"] = {**payload["sender"], "login": "reviewer", "type": "User"}
    return payload


def deliver_and_wait(stack: Stack, event: str, payload: dict[str, Any]) -> None:
    """Deliver `payload` and wait until the worker has handled it (its stored payload is dropped)."""
    guid = deliver(stack.github, event, payload, f"{stack.web_url}/webhooks/github", SECRET)
    client = redis.Redis.from_url(stack.settings.redis_url or "")
    deadline = time.monotonic() + 30
    while client.exists(claim_key(guid) + ":payload") and time.monotonic() < deadline:
        time.sleep(0.05)
    client.close()
    assert time.monotonic() < deadline, f"delivery {guid} was never handled"


def test_a_follow_up_runs_only_for_the_routines_own_run_repository_and_branch(stack: Stack) -> None:
    first = stack.wait(fire(stack, "fixer", "acme/svc").json()["run_id"])
    docs = stack.wait(fire(stack, "docs", "acme/docs").json()["run_id"])
    assert first["state"] == docs["state"] == "succeeded"
    branch = first["branch"]
    refused = [
        review_comment(stack, branch, head_repo="mallory/svc"),  # the same branch name, pushed from a fork
        review_comment(stack, branch, repo="acme/other"),  # another repository, not the routine's
        review_comment(stack, f"routines/fixer/{docs['id']}"),  # another routine's run under this routine's name
        review_comment(stack, "routines/fixer/00000000000000000000"),  # no such run
    ]
    for payload in refused:
        deliver_and_wait(stack, "pull_request_review_comment", payload)
    assert len(runs(stack)) == 2, "nothing ran for a fork, another repository or another routine's run"

    deliver_and_wait(stack, "pull_request_review_comment", review_comment(stack, branch))
    assert len(runs(stack)) == 3, "the routine's own PR does get its follow-up"


def workflow_run(stack: Stack, *, head_repo: str, actor: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((PAYLOADS / "workflow_run.completed.json").read_text())
    repository = {**payload["repository"], "full_name": "acme/svc", "name": "svc"}
    run = payload["workflow_run"]
    run.update(head_branch="main", head_repository={**run["head_repository"], "full_name": head_repo})
    run["actor"] = run["triggering_actor"] = {**run["actor"], "login": actor, "type": "User"}
    payload.update(repository=repository, installation={"id": stack.installation})
    payload["sender"] = copy.deepcopy(run["actor"])
    return payload


def test_ci_events_from_forks_or_untrusted_actors_start_nothing(stack: Stack) -> None:
    stack.github.repos["acme/svc"].collaborators.update(maintainer="maintain", reader="read")
    for payload in (
        workflow_run(stack, head_repo="mallory/svc", actor="maintainer"),  # a fork's `main`
        workflow_run(stack, head_repo="acme/svc", actor="reader"),  # read access only
        workflow_run(stack, head_repo="acme/svc", actor="drive-by"),  # no access at all
    ):
        deliver_and_wait(stack, "workflow_run", payload)
    assert runs(stack) == []

    deliver_and_wait(stack, "workflow_run", workflow_run(stack, head_repo="acme/svc", actor="maintainer"))
    assert [r["routine"] for r in runs(stack)] == ["ci-fix"]
