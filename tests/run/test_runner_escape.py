"""The escape suite, run as a routine's own commands: each attempt contained, recorded, and the run goes on."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.sandbox.bwrap import sandbox_available
from app.testing.anthropic_server import Script, Turn, bash, edit_create, text
from app.testing.stack import Stack, running_stack

WORKER_SECRET = "worker-only-secret-value-7f3a9c"

pytestmark = pytest.mark.skipif(sandbox_available() is not None, reason=str(sandbox_available()))


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv("ROUTINES_TEST_WORKER_SECRET", WORKER_SECRET)
    folder = tmp_path / "routines"
    folder.mkdir()
    (folder / "escape.md").write_text(
        "---\nname: escape\nrepo: acme/svc\nnetwork: {allow: [localhost]}\n---\nTry things. [script:escape]\n"
    )
    with running_stack(tmp_path, redis_url, routines_dir=folder, sandbox="bwrap", command_timeout_s=3) as s:
        s.github.add_repo("acme/svc", s.installation)
        yield s


def test_every_escape_is_contained_and_the_run_continues(stack: Stack, tmp_path: Path) -> None:
    key_file = tmp_path / "app-key.pem"
    key_file.write_text(stack.settings.github_app_private_key or "")
    outside = tmp_path / "outside.txt"
    redis_port = urlsplit(stack.settings.redis_url or "").port or 6379
    attempts = {
        "environment": "env; cat /proc/1/environ /proc/$PPID/environ 2>&1 | tr '\\0' '\\n'; "
        "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c ROUTINES_TEST_WORKER_SECRET || true",
        "app key": f"cat {key_file} 2>&1",
        "write outside": f"echo pwned > {outside} 2>&1; echo pwned > /usr/pwned 2>&1; echo done",
        "git hooks": "echo 'touch /tmp/hooked' > .git/hooks/pre-commit 2>&1; echo '[core]' >> .git/config 2>&1; true",
        "redis": f"(exec 3<>/dev/tcp/127.0.0.1/{redis_port} && echo PING >&3 && head -c 7 <&3) 2>&1"
        " || echo unreachable",
        "unlisted host": "curl -sS -o /dev/null -w '%{http_code}' https://not-allowed.example/ 2>&1; echo",
        "loopback name": "curl -sS --noproxy '' -x http://127.0.0.1:3128 -o /dev/null -w '%{http_code}' "
        f"http://localhost:{redis_port}/; echo",
        "fork bomb": "bash -c ':(){ :|:& };:'",
        "2 GB of output": "head -c 2000000000 /dev/zero | tr '\\0' a",
        "never ends": "sleep 1000",
    }
    turns = [Turn([bash(command)]) for command in attempts.values()]
    turns += [Turn([bash("echo still here")]), Turn([edit_create("NOTES.md", "tried\n")]), Turn([text("Done.")])]
    stack.anthropic.add_script(Script(match="[script:escape]", turns=turns))

    run = stack.wait(stack.fire("escape").json()["run_id"], timeout_s=180)

    assert run["state"] == "succeeded", run["error"]
    events = stack.events(run["id"])
    results = dict(zip(attempts, (e["data"] for e in events if e["type"] == "tool.result"), strict=False))
    assert WORKER_SECRET not in json.dumps(events)
    assert results["environment"]["output"].strip().endswith("0")
    assert "BEGIN" not in results["app key"]["output"] and "No such file" in results["app key"]["output"]
    assert not outside.exists() and not Path("/usr/pwned").exists()
    assert "Read-only file system" in results["git hooks"]["output"]
    assert "PONG" not in results["redis"]["output"] and "unreachable" in results["redis"]["output"]
    assert "response 403" in results["unlisted host"]["output"]
    assert results["loopback name"]["output"].strip().endswith("403")
    bomb = results["fork bomb"]["output"]  # it forks in the background, against the cgroup's pids.max
    assert "process limit" in bomb and "restarted" in bomb, "what the bomb left is killed"
    after = [e["data"]["output"] for e in events if e["type"] == "tool.result"][len(attempts)]
    assert after.strip() == "still here"  # the shell works again after the bomb, the flood and the hang
    assert "output cut" in results["2 GB of output"]["output"] and len(results["2 GB of output"]["output"]) < 100_000
    assert results["never ends"]["is_error"] and "timed out" in results["never ends"]["output"].lower()
    denied = {e["data"]["host"]: e["data"]["reason"] for e in events if e["type"] == "egress.denied"}
    assert "not-allowed.example" in denied and "localhost" in denied and "loopback" in denied["localhost"]
    assert not any("hooked" in hook for hook in _pre_commit_hooks(stack.settings.data_dir / "runs"))
    assert os.environ["ROUTINES_TEST_WORKER_SECRET"] == WORKER_SECRET
    pr = stack.github.pulls("acme/svc")[0]
    assert "not-allowed.example" in pr["body"]


def _pre_commit_hooks(root: Path) -> list[str]:
    """Every pre-commit hook under `root`, read while the finished run's work tree may still be going away."""
    found = []
    for folder, _, files in os.walk(root):  # os.walk skips folders removed under it; Path.rglob raises
        for name in files:
            if name == "pre-commit":
                try:
                    found.append((Path(folder) / name).read_text())
                except FileNotFoundError:
                    continue
    return found
