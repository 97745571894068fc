"""The resume drill: a worker process SIGKILLed mid-run, another worker finishes the run from its event log."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pygit2
import pytest

from app.core.domain import Event
from app.models.scripts import turn_index
from app.run.resume import INTERRUPTED, rebuild
from app.testing.anthropic_server import Script, Turn, bash, edit_create, edit_str_replace, text, tool_use
from app.testing.stack import Stack, WorkerThread, running_stack
from tests.run.test_runner import CALC, TEST, routine_file
from tests.support.takers import killed_after_taking

LEASE_S = 1.5


def ten_turns(match: str, *, slow_turn: int | None = None) -> Script:
    """Nine turns that each change files and run a command, then a summary; `slow_turn` answers late."""
    turns = [
        Turn(
            [text(f"Step {i}."), edit_create(f"notes/n{i}.txt", f"note {i}\n"), bash(f"echo {i} >> runs.log")],
            delay_ms=2500 if i == slow_turn else 0,
        )
        for i in range(1, 10)
    ]
    turns[2] = Turn([edit_str_replace("calc.py", "return a - b", "return a + b"), bash("echo 3 >> runs.log")])
    turns.append(Turn([text("Ten steps done\n\nEvery step left a note.")]))
    return Script(match=match, turns=turns)


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    routines = tmp_path / "routines"
    routines.mkdir()
    routine_file(routines, "reference", "Take ten steps. [script:reference]")
    routine_file(routines, "drill", "Take ten steps. [script:drill]")
    source = tmp_path / "calc-src"
    source.mkdir()
    (source / "calc.py").write_text(CALC)
    (source / "test_calc.py").write_text(TEST)
    with running_stack(tmp_path, redis_url, routines_dir=routines, worker=False, lease_s=LEASE_S, reaper_s=0.3) as s:
        s.github.add_repo("acme/calc", s.installation, source_dir=source)
        yield s


def wait_for(stack: Stack, run_id: str, kind: str, turn: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(e["type"] == kind and e["data"].get("turn") == turn for e in stack.events(run_id)):
            return
        time.sleep(0.05)
    raise TimeoutError(f"run {run_id} never recorded {kind} for turn {turn}")


@contextmanager
def worker_process(stack: Stack, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`routines worker` as its own process (one that can be killed), logging to `log_path`."""
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app", "worker"], env=stack.process_env(), stdout=log, stderr=log
        )
        try:
            yield worker
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)


def finish_elsewhere(stack: Stack, run_id: str) -> dict[str, Any]:
    """Start a second worker and wait for it to end the run."""
    worker = WorkerThread(stack.settings).start()
    try:
        return stack.wait(run_id, timeout_s=60)
    finally:
        worker.stop()


def tree_of(stack: Stack, branch: str) -> str:
    repo = pygit2.Repository(str(stack.github.repos["acme/calc"].path))
    return str(repo.revparse_single(f"refs/heads/{branch}").peel(pygit2.Commit).tree_id)


def test_worker_killed_at_turn_5_is_resumed_by_another_worker(stack: Stack, tmp_path: Path) -> None:
    stack.anthropic.add_script(ten_turns("[script:reference]"))
    drill_script = stack.anthropic.add_script(ten_turns("[script:drill]", slow_turn=6))
    with worker_process(stack, tmp_path / "worker-a.log") as worker_a:
        reference = stack.wait(stack.fire("reference").json()["run_id"], timeout_s=60)
        assert reference["state"] == "succeeded", reference["error"]
        run_id = stack.fire("drill").json()["run_id"]
        wait_for(stack, run_id, "workspace.checkpoint", 5)
        worker_a.send_signal(signal.SIGKILL)
        worker_a.wait(10)
    before = stack.events(run_id)
    run = finish_elsewhere(stack, run_id)

    assert run["state"] == "succeeded", run["error"]
    assert max((e["data"]["turn"] for e in before if e["type"] == "model.turn"), default=0) == 5
    assert tree_of(stack, run["branch"]) == tree_of(stack, reference["branch"])
    assert [p["head"]["ref"] for p in stack.github.pulls("acme/calc")].count(run["branch"]) == 1
    assert run["turns"] == 10 and run["usage"]["output_tokens"] == reference["usage"]["output_tokens"]
    assert run["cost_usd"] > 0.9 * reference["cost_usd"], "the cost of the turns before the kill is carried over"

    events = stack.events(run_id)
    resumed = [e["data"] for e in events if e["type"] == "run.resumed"]
    assert resumed == [{"attempt": 1, "from_turn": 5, "state": "running"}]
    calls = [e["data"]["id"] for e in events if e["type"] == "tool.call"]
    results = [e["data"]["id"] for e in events if e["type"] == "tool.result"]
    assert len(calls) == len(set(calls)) == 18 and sorted(results) == sorted(calls)
    assert [e["data"]["turn"] for e in events if e["type"] == "model.turn"] == list(range(1, 11))
    states = [e["data"]["state"] for e in events if e["type"] == "run.state"]
    assert states == ["queued", "preparing", "running", "finishing", "succeeded"]
    seen = [turn_index(r.body["messages"]) for r in stack.anthropic.requests if _is(r.body, drill_script)]
    # The kill lands while turn 6's request is in flight (asked again after the resume) or before its body
    # reached the server (asked once); either way no other turn is ever asked twice.
    assert seen in ([0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9], list(range(10))), "only the turn in flight is asked again"
    restart = str(stack.anthropic.requests[-1].body["messages"])
    assert "The machine running you restarted" in restart and "end of turn 5" in restart


def test_a_worker_stopped_with_sigterm_hands_its_run_to_another_worker(stack: Stack, tmp_path: Path) -> None:
    """A rolling upgrade: the stopped worker cancels its run, which is not over; another worker resumes it
    at once (the lease is dropped, not left to expire) and the concurrency group is not handed on."""
    stack.anthropic.add_script(ten_turns("[script:drill]", slow_turn=6))
    with worker_process(stack, tmp_path / "worker-a.log") as worker_a:
        run_id = stack.fire("drill").json()["run_id"]
        wait_for(stack, run_id, "workspace.checkpoint", 5)
        worker_a.send_signal(signal.SIGTERM)
        assert worker_a.wait(30) == 0, (tmp_path / "worker-a.log").read_text()
    stopped = stack.get(f"/api/runs/{run_id}").json()
    run = finish_elsewhere(stack, run_id)

    assert stopped["state"] == "running", "a stopped worker does not end the run"
    assert run["state"] == "succeeded", run["error"]
    events = stack.events(run_id)
    assert [e["data"]["from_turn"] for e in events if e["type"] == "run.resumed"] == [5]
    assert [e["data"]["turn"] for e in events if e["type"] == "model.turn"] == list(range(1, 11))


def test_a_worker_killed_before_its_run_took_the_lease_leaves_the_run_to_another_worker(stack: Stack) -> None:
    """Killed in the milliseconds between arq taking the job and the run taking its lease: the run was never
    live, and its job stays marked in progress for hours. The other worker's sweep finds the job taken
    and the run's lease free, twice two leases apart, and hands the run to its reaper."""
    stack.anthropic.add_script(ten_turns("[script:drill]"))
    run_id = stack.fire("drill").json()["run_id"]
    assert killed_after_taking(stack.settings.redis_url or "") == [run_id]
    run = finish_elsewhere(stack, run_id)

    assert run["state"] == "succeeded", run["error"]
    states = [e["data"]["state"] for e in stack.events(run_id) if e["type"] == "run.state"]
    assert states == ["queued", "preparing", "running", "finishing", "succeeded"]


def _is(body: dict[str, Any], script: Script) -> bool:
    return script.matches(str(body.get("system")) + str(body["messages"][0]["content"]))


def _turn(n: int, content: list[dict[str, Any]], stop: str) -> Event:
    return Event("model.turn", {"turn": n, "content": content, "stop_reason": stop, "usage": {"output_tokens": 10}})


def test_rebuild_answers_recorded_calls_from_the_log_and_interrupted_ones_with_an_error() -> None:
    calls = [tool_use("bash", {"command": "make"}), tool_use("bash", {"command": "make test"})]
    calls[0]["id"], calls[1]["id"] = "toolu_a", "toolu_b"
    events = [
        _turn(1, [text("Building."), *calls], "tool_use"),
        Event("tool.call", {"id": "toolu_a", "name": "bash", "input": {"command": "make"}}),
        Event("tool.result", {"id": "toolu_a", "name": "bash", "output": "x" * 99, "sent": "x…x", "is_error": False}),
        Event("tool.call", {"id": "toolu_b", "name": "bash", "input": {"command": "make test"}}),
        Event("workspace.checkpoint", {"turn": 1, "commit": "abc", "patch": ""}),
    ]
    task = [text("Fix it.")]

    done = rebuild(events, task, lambda usage: usage["output_tokens"] / 1000)

    assert not done.finished and done.outcome.turns == 1 and done.outcome.cost_usd == pytest.approx(0.01)
    assert done.outcome.commands == ["make", "make test"] and done.checkpoint == events[-1].data
    assert [m["role"] for m in done.outcome.messages] == ["user", "assistant", "user"]
    answers = done.outcome.messages[2]["content"]
    assert answers[0] == {"type": "tool_result", "tool_use_id": "toolu_a", "content": "x…x", "is_error": False}
    assert answers[1]["tool_use_id"] == "toolu_b" and answers[1]["is_error"] and answers[1]["content"] == INTERRUPTED
    assert done.interrupted == [calls[1]]


def test_rebuild_replays_messages_compaction_and_a_finished_turn() -> None:
    compacted = [{"role": "user", "content": [text("Fix it."), text("Summary so far.")]}]
    events = [
        _turn(1, [text("Looking."), {**tool_use("bash", {"command": "ls"}), "id": "toolu_c"}], "tool_use"),
        Event("tool.result", {"id": "toolu_c", "name": "bash", "output": "a.py", "is_error": False}),
        Event("context.compacted", {"messages": compacted, "usage": {"output_tokens": 5}, "cost_usd": 0.5}),
        Event("run.message.delivered", {"turn": 2, "text": "also fix b.py"}),
        Event("run.resumed", {"attempt": 1, "from_turn": 1}),
        _turn(2, [text("Done\n\nFixed both.")], "end_turn"),
    ]
    done = rebuild(events, [text("Fix it.")], lambda usage: 0.0)
    assert done.finished and done.outcome.summary == "Done\n\nFixed both." and done.resumes == 1
    assert done.outcome.turns == 2 and done.outcome.usage["output_tokens"] == 25 and done.outcome.cost_usd == 0.5
    first = done.outcome.messages[0]["content"]
    assert first[:2] == compacted[0]["content"] and "also fix b.py" in first[2]["text"]
    assert done.outcome.messages[1]["role"] == "assistant"
