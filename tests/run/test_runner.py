"""End to end: a routine fired over HTTP → worker → agent with real tools → draft PR on the test GitHub."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from app.core.domain import RunState
from app.run.runner import execute
from app.services import build
from app.testing.anthropic_server import Script, Turn, bash, edit_str_replace, edit_view, text
from app.testing.stack import Stack, running_stack
from tests.support.stacks import api_routines

CALC = "def add(a, b):\n    return a - b\n"
TEST = 'from calc import add\n\nassert add(2, 3) == 5, "add(2, 3) should be 5"\nprint("all tests pass")\n'


def routine_file(folder: Path, name: str, prompt: str, extra: str = "") -> None:
    front = f"name: {name}\nrepo: acme/calc\non:\n  api: true\n{extra}"
    (folder / f"{name}.md").write_text(f"---\n{front}---\n{prompt}\n")


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    routines = tmp_path / "routines"
    routines.mkdir()
    routine_file(routines, "fix-calc", "Make test_calc.py pass. [script:fix]")
    routine_file(routines, "look-only", "Look around and change nothing. [script:look]")
    routine_file(routines, "flaky-model", "Make test_calc.py pass. [script:flaky]")
    routine_file(routines, "endless", "Keep going. [script:endless]", "limits: {max_turns: 4}\n")
    source = tmp_path / "calc-src"
    source.mkdir()
    (source / "calc.py").write_text(CALC)
    (source / "test_calc.py").write_text(TEST)
    with running_stack(tmp_path, redis_url, routines_dir=routines) as s:
        s.github.add_repo("acme/calc", s.installation, source_dir=source)
        yield s


def fix_script(match: str, *, faults: list[int] | None = None) -> Script:
    return Script(
        match=match,
        turns=[
            Turn([text("Running the tests first."), bash("python3 test_calc.py")], faults=faults or []),
            Turn([edit_view("calc.py")]),
            Turn([edit_str_replace("calc.py", "return a - b", "return a + b")]),
            Turn([bash("python3 test_calc.py")]),
            Turn([text("Fix add() in calc.py\n\n`add` subtracted instead of adding; test_calc.py passes now.")]),
        ],
    )


def branch_file(stack: Stack, branch: str, path: str) -> str:
    repo = pygit2.Repository(str(stack.github.repos["acme/calc"].path))
    commit = repo.revparse_single(f"refs/heads/{branch}")
    blob = commit.peel(pygit2.Commit).tree[path]
    return blob.peel(pygit2.Blob).data.decode()


def test_fired_routine_opens_a_draft_pr_with_the_fix(stack: Stack) -> None:
    stack.anthropic.add_script(fix_script("[script:fix]"))
    reply = stack.fire("fix-calc", text="CI says test_calc fails")
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert body["state"] == "queued" and body["url"].endswith(f"/runs/{body['run_id']}")

    run = stack.wait(body["run_id"])

    assert run["state"] == "succeeded", run["error"]
    branch = f"routines/fix-calc/{run['id']}"
    assert run["branch"] == branch
    pulls = stack.github.pulls("acme/calc")
    assert len(pulls) == 1
    pr = pulls[0]
    assert pr["draft"] is True and pr["head"]["ref"] == branch and pr["base"]["ref"] == "main"
    assert run["pull_request"] == {"number": pr["number"], "url": pr["html_url"]}
    assert "add` subtracted instead of adding" in pr["body"]
    assert "python3 test_calc.py" in pr["body"] and f"/runs/{run['id']}" in pr["body"] and "$" in pr["body"]
    assert pr["title"] == "Fix add() in calc.py"
    assert branch_file(stack, branch, "calc.py") == "def add(a, b):\n    return a + b\n"
    assert branch_file(stack, "main", "calc.py") == CALC

    events = stack.events(run["id"])
    types = [e["type"] for e in events]
    assert types.count("model.turn") == 5 and types.count("tool.call") == 4 and types.count("tool.result") == 4
    results = [e["data"] for e in events if e["type"] == "tool.result"]
    assert "should be 5" in results[0]["output"] and "all tests pass" in results[3]["output"]
    states = [e["data"]["state"] for e in events if e["type"] == "run.state"]
    assert states == ["queued", "preparing", "running", "finishing", "succeeded"]
    assert run["trigger"]["text"] == "CI says test_calc fails"
    first_request = stack.anthropic.requests[0].body
    assert "CI says test_calc fails" in str(first_request["messages"][0]["content"])


def test_no_change_means_no_changes_and_nothing_opened(stack: Stack) -> None:
    stack.anthropic.add_script(
        Script(
            match="[script:look]", turns=[Turn([bash("ls")]), Turn([text("Everything is fine; nothing to change.")])]
        )
    )
    run = stack.wait(stack.fire("look-only").json()["run_id"])
    assert run["state"] == "no_changes"
    assert run["pull_request"] is None and run["branch"] is None
    assert stack.github.pulls("acme/calc") == []
    repo = pygit2.Repository(str(stack.github.repos["acme/calc"].path))
    assert [r for r in repo.references if r.startswith("refs/heads/routines/")] == []


def test_the_repositorys_instructions_come_from_its_commit(stack: Stack) -> None:
    stack.github.commit_files("acme/calc", "main", {"CLAUDE.md": "Run python3 test_calc.py first.\n"}, "notes")
    stack.anthropic.add_script(Script(match="[script:look]", turns=[Turn([text("Nothing to change.")])]))
    run = stack.wait(stack.fire("look-only").json()["run_id"])
    assert run["state"] == "no_changes", run["error"]
    system = "\n".join(block["text"] for block in stack.anthropic.requests[-1].body["system"])
    assert '<repository-instructions file="CLAUDE.md">\nRun python3 test_calc.py first.' in system


def test_two_overloaded_answers_then_success(stack: Stack) -> None:
    stack.anthropic.add_script(fix_script("[script:flaky]", faults=[529, 529]))
    run = stack.wait(stack.fire("flaky-model").json()["run_id"])
    assert run["state"] == "succeeded", run["error"]
    assert stack.anthropic.statuses[:3] == [529, 529, 200]
    assert len(stack.github.pulls("acme/calc")) == 1


def test_model_that_never_finishes_hits_max_turns_and_delivers_incomplete_draft(stack: Stack) -> None:
    stack.anthropic.add_script(
        Script(
            match="[script:endless]",
            turns=[
                Turn([edit_str_replace("calc.py", "return a - b", "return a + b")]),
                Turn([text("Still checking."), bash("echo checking")]),
            ],
            loop_last=True,
        )
    )
    run = stack.wait(stack.fire("endless").json()["run_id"])
    assert run["state"] == "failed"
    assert "max_turns" in run["error"] and "4" in run["error"]
    assert run["incomplete"] is True and run["turns"] == 4
    pulls = stack.github.pulls("acme/calc")
    assert len(pulls) == 1 and pulls[0]["draft"] is True
    assert pulls[0]["title"].startswith("[incomplete]") and "Incomplete" in pulls[0]["body"]
    assert branch_file(stack, run["branch"], "calc.py") == "def add(a, b):\n    return a + b\n"
    told = [str(r.body["messages"][-1]["content"]) for r in stack.anthropic.requests]
    assert sum("Wrap up now" in t for t in told) == 1


def test_fire_refuses_bad_tokens_and_unknown_routines(stack: Stack) -> None:
    assert stack.fire("fix-calc", token="nope").status_code == 401
    missing = stack.fire("no-such-routine")
    assert missing.status_code == 404 and "known routines" in missing.json()["error"]
    assert stack.client.post(f"{stack.web_url}/api/routines/fix-calc/fire").status_code == 401
    bad = stack.client.post(
        f"{stack.web_url}/api/routines/fix-calc/fire",
        content=b"{not json",
        headers={"authorization": "Bearer test-admin-token"},
    )
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    assert stack.get("/api/runs/does-not-exist").status_code == 404
    assert stack.get("/api/runs").json() == {"runs": []}


async def test_a_run_that_could_start_only_later_sees_what_was_pushed_before_its_turn(
    tmp_path: Path, redis_url: str
) -> None:
    """A run that waited (for its concurrency group: its job is enqueued when its turn comes) is fetched after
    its turn, not only after its fire: it sees what the run before it pushed, even when the mirror was
    fetched in between, after the fire."""
    with api_routines(tmp_path, redis_url, ["after"]) as stack:
        stack.anthropic.add_script(Script(match="[script:after]", turns=[Turn([text("Nothing to change.")])]))
        run_id = stack.fire("after").json()["run_id"]
        services = await build(stack.settings)
        try:
            deps = await services.runner_deps()
            forge = deps.code.forge_for("acme/app")
            repo = await forge.resolve("acme/app")
            creds = await forge.credentials(repo, {"contents": "read"})
            await deps.code.workspaces.ensure(repo.clone_url, creds)  # the run before it fetched, after the fire
            pushed = stack.github.commit_files("acme/app", "main", {"later.txt": "pushed by the run before\n"})
            run = await execute(run_id, deps, startable_at=time.time())
            assert run.state is RunState.NO_CHANGES, run.error
            ready = [e.data for e in await services.store.events(run_id) if e.type == "workspace.ready"]
            assert [data["commit"] for data in ready] == [pushed]
        finally:
            await services.close()


async def test_a_run_fired_before_a_fetch_began_is_served_by_it_without_a_fetch_of_its_own(
    tmp_path: Path, redis_url: str
) -> None:
    """The runs of a burst share the first fetch that began after they were fired."""
    with api_routines(tmp_path, redis_url, ["burst"]) as stack:
        stack.anthropic.add_script(Script(match="[script:burst]", turns=[Turn([text("Nothing to change.")])]))
        services = await build(stack.settings)
        try:
            deps, mirrors = await services.runner_deps(), services.mirrors
            forge = deps.code.forge_for("acme/app")
            repo = await forge.resolve("acme/app")
            creds = await forge.credentials(repo, {"contents": "read"})
            primed = await mirrors.ensure(repo.clone_url, creds)  # a mirror with its whole history, first
            await mirrors.checkout(primed, "main", tmp_path / "primed")
            await mirrors.settle()
            run_id = stack.fire("burst").json()["run_id"]
            await mirrors.ensure(repo.clone_url, creds)  # another run of the burst fetched, after the fire
            listings = len([r for r in stack.github.requests if r.path.endswith("/info/refs")])
            run = await execute(run_id, deps)
            assert run.state is RunState.NO_CHANGES, run.error
            assert len([r for r in stack.github.requests if r.path.endswith("/info/refs")]) == listings
        finally:
            await services.close()
