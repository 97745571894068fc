"""End to end: a run that reaches its max_cost_usd still delivers its work as an incomplete draft PR."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from app.agent.loop import USAGE_KEYS
from app.core.pricing import cost_usd
from app.testing.anthropic_server import Script, Turn, bash, edit_str_replace, text
from app.testing.stack import Stack, running_stack

CALC = "def add(a, b):\n    return a - b\n"
MAX_COST_USD = 0.02


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    routines = tmp_path / "routines"
    routines.mkdir()
    front = f"name: spendy\nrepo: acme/calc\non:\n  api: true\nlimits: {{max_cost_usd: {MAX_COST_USD}}}\n"
    (routines / "spendy.md").write_text(f"---\n{front}---\nFix calc.py, then keep checking. [script:spendy]\n")
    source = tmp_path / "calc-src"
    source.mkdir()
    (source / "calc.py").write_text(CALC)
    with running_stack(tmp_path, redis_url, routines_dir=routines) as s:
        s.github.add_repo("acme/calc", s.installation, source_dir=source)
        yield s


def branch_file(stack: Stack, branch: str, path: str) -> str:
    repo = pygit2.Repository(str(stack.github.repos["acme/calc"].path))
    blob = repo.revparse_single(f"refs/heads/{branch}").peel(pygit2.Commit).tree[path]
    return blob.data.decode()  # type: ignore[union-attr]


def test_max_cost_usd_delivers_the_partial_work_as_an_incomplete_draft(stack: Stack) -> None:
    stack.anthropic.add_script(
        Script(
            match="[script:spendy]",
            turns=[
                Turn([text("Fixing add first."), edit_str_replace("calc.py", "return a - b", "return a + b")]),
                Turn([text("Checking again."), bash("seq 1 300")]),
            ],
            loop_last=True,
        )
    )
    run = stack.wait(stack.fire("spendy").json()["run_id"])

    assert run["state"] == "failed" and run["incomplete"] is True
    match = re.match(r"max_cost_usd \(\$0\.02\) reached after (\d+) turns \(\$([\d.]+) spent\)", run["error"])
    assert match is not None, run["error"]
    assert int(match[1]) == run["turns"] and 3 <= run["turns"] < 60
    assert float(match[2]) == pytest.approx(run["cost_usd"], abs=1e-4) and run["cost_usd"] >= MAX_COST_USD

    turns = [e["data"] for e in stack.events(run["id"]) if e["type"] == "model.turn"]
    assert len(turns) == run["turns"]
    assert run["usage"] == {key: sum(t["usage"][key] for t in turns) for key in USAGE_KEYS}
    assert run["usage"]["cache_read_input_tokens"] > 0 and run["usage"]["cache_creation_input_tokens"] > 0
    priced = [cost_usd("claude-sonnet-4-6", t["usage"]) for t in turns]
    assert run["cost_usd"] == pytest.approx(sum(priced))
    assert sum(priced[:-1]) < MAX_COST_USD, "the run went on after the budget was used up"

    pulls = stack.github.pulls("acme/calc")
    assert len(pulls) == 1 and pulls[0]["draft"] is True
    assert pulls[0]["title"].startswith("[incomplete]")
    assert "Incomplete" in pulls[0]["body"] and "max_cost_usd ($0.02) reached" in pulls[0]["body"]
    assert branch_file(stack, run["branch"], "calc.py") == "def add(a, b):\n    return a + b\n"
    told = [str(r.body["messages"][-1]["content"]) for r in stack.anthropic.requests]
    assert sum("Wrap up now" in t for t in told) == 1
    assert sum("spent" in t and "Wrap up now" in t for t in told) == 1
