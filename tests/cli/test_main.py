"""The `routines` command as a user runs it: real processes, a local repository, the test model server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pygit2
import pytest
from redis import asyncio as aioredis

from app.core.domain import Event, Run, Trigger
from app.store.runs import RedisStore
from app.testing.anthropic_server import AnthropicState, Script, Turn, bash, create_app, edit_str_replace, text
from app.testing.serve import Served, free_port, serve_in_thread
from tests.support.git import git
from tests.support.paths import EXAMPLE_ROUTINES

KEY = "sk-ant-cli-test-0123456789"




@pytest.fixture
def model() -> Iterator[tuple[AnthropicState, Served]]:
    state = AnthropicState(api_keys={KEY})
    with serve_in_thread(create_app(state)) as served:
        yield state, served


@pytest.fixture
def local_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "calc"
    repo.mkdir()
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "init", cwd=repo)
    return repo


def env_for(tmp_path: Path, served: Served | None, redis_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "ROUTINES_", "ANTHROPIC_", "GITHUB_"))}
    env.update(ROUTINES_DIR=str(tmp_path / "routines"), ROUTINES_DATA_DIR=str(tmp_path / "data"), **extra)
    if redis_url:
        env["REDIS_URL"] = redis_url
    if served:
        env.update(ANTHROPIC_BASE_URL=served.url, ANTHROPIC_API_KEY=KEY)
    return env


def routines(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def write_routine(tmp_path: Path, repo: Path, name: str = "fix-local") -> None:
    folder = tmp_path / "routines"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.md").write_text(f"---\nname: {name}\nrepo: {repo}\n---\nFix add(). [script:local]\n")


def test_run_on_a_local_repo_leaves_a_branch_with_the_change(
    tmp_path: Path, local_repo: Path, model: tuple[AnthropicState, Served], redis_url: str
) -> None:
    state, served = model
    state.add_script(
        Script(
            match="[script:local]",
            turns=[
                Turn([edit_str_replace("calc.py", "a - b", "a + b")]),
                Turn([bash("cat calc.py")]),
                Turn([text("Fixed add().")]),
            ],
        )
    )
    write_routine(tmp_path, local_repo)
    done = routines(
        "run", "fix-local", "--text", "add is wrong", env=env_for(tmp_path, served, redis_url), cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout and "Fixed add()." in done.stdout
    assert "↳ str_replace_based_edit_tool" in done.stdout  # events printed as they happen
    repo = pygit2.Repository(str(local_repo))
    branches = [b for b in repo.branches.local if b.startswith("routines/fix-local/")]
    assert len(branches) == 1 and f"branch: {branches[0]}" in done.stdout
    tree = repo.revparse_single(branches[0]).peel(pygit2.Commit).tree
    assert tree["calc.py"].data == b"def add(a, b):\n    return a + b\n"  # type: ignore[union-attr]
    assert (local_repo / "calc.py").read_text() == "def add(a, b):\n    return a - b\n"  # checked-out main untouched
    assert repo.head.shorthand == "main"


def test_run_that_changes_nothing_exits_non_zero(
    tmp_path: Path, local_repo: Path, model: tuple[AnthropicState, Served], redis_url: str
) -> None:
    state, served = model
    state.add_script(Script(match="[script:local]", turns=[Turn([text("Nothing to do.")])]))
    write_routine(tmp_path, local_repo)
    done = routines("run", "fix-local", env=env_for(tmp_path, served, redis_url), cwd=tmp_path)
    assert done.returncode == 1 and "no_changes" in done.stdout
    assert [b for b in pygit2.Repository(str(local_repo)).branches.local if b.startswith("routines/")] == []


def test_validate_reports_file_line_and_fix(tmp_path: Path) -> None:
    folder = tmp_path / "routines"
    folder.mkdir()
    (folder / "good.md").write_text("---\nname: good\nrepo: acme/api\n---\nDo it.\n")
    (folder / "bad.md").write_text("---\nname: bad\nrepo: acme/api\nshedule: daily\n---\nDo it.\n")
    env = env_for(tmp_path, None, None)
    done = routines("validate", str(folder), env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert f"{folder / 'bad.md'}:4:" in done.stderr and "did you mean" in done.stderr
    shipped = routines("validate", str(EXAMPLE_ROUTINES), env=env, cwd=tmp_path)
    assert shipped.returncode == 0, shipped.stderr


def test_bad_setting_is_one_clear_message(tmp_path: Path) -> None:
    done = routines("validate", env=env_for(tmp_path, None, None, PORT="http"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "routines: PORT='http' is not a whole number; set it to a whole number such as 8000"


def test_dev_starts_an_embedded_redis_when_redis_url_is_unset(tmp_path: Path, local_repo: Path) -> None:
    write_routine(tmp_path, local_repo)
    port = free_port()
    # a closed local port: the fired run must never reach the real API
    env = env_for(tmp_path, None, None, PORT=str(port), ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL="http://127.0.0.1:9")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "dev"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a process group of its own, as in a terminal
    )
    try:
        health = None
        for _ in range(300):
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health is not None and health.json() == {"ok": True}
        routines_list = httpx.get(f"http://127.0.0.1:{port}/api/routines").json()
        assert [r["name"] for r in routines_list["routines"]] == ["fix-local"]
        token = routines("token", "fix-local", env=env, cwd=tmp_path)  # attaches to the dev server's Redis
        assert token.returncode == 0, token.stderr
        fired = httpx.post(
            f"http://127.0.0.1:{port}/api/routines/fix-local/fire",
            headers={"authorization": f"Bearer {token.stdout.strip()}"},
        )
        assert fired.status_code == 202
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C: the whole foreground process group gets it
        out, _ = proc.communicate(timeout=30)
    assert b"REDIS_URL is not set: started embedded" in out
    assert (tmp_path / "data" / "redis").is_dir()
    assert proc.returncode in (0, 130) and b"Traceback" not in out, out.decode()  # 130: stopped by Ctrl+C
    assert not (tmp_path / "data" / "redis" / "port").exists(), "the embedded server was stopped"


def test_dev_stops_cleanly_on_sigterm_and_takes_its_embedded_redis_with_it(tmp_path: Path, local_repo: Path) -> None:
    """As under Docker or systemd: SIGTERM to the process alone (not its group) stops web, worker and the
    embedded server it started; no valkey-server is left writing under the data directory."""
    write_routine(tmp_path, local_repo)
    port = free_port()
    env = env_for(tmp_path, None, None, PORT=str(port), ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL="http://127.0.0.1:9")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "dev"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        server_port = int((tmp_path / "data" / "redis" / "port").read_text())
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and b"Traceback" not in out, out.decode()
    assert not (tmp_path / "data" / "redis" / "port").exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server_port), timeout=1).close()


def test_secrets_are_set_from_stdin_and_never_printed(tmp_path: Path, redis_url: str) -> None:
    env = env_for(tmp_path, None, redis_url, ROUTINES_SECRET_KEY="cli-test-key-0123456789abcdefghijklmnop")
    value = "sntrys_cli_value_that_must_not_be_printed_123"
    put = subprocess.run(
        [sys.executable, "-m", "app", "secrets", "set", "SENTRY_AUTH_TOKEN", "--domains", "sentry.io,*.sentry.io"],
        input=value + "\n",
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert put.returncode == 0, put.stderr
    listed = routines("secrets", "list", env=env, cwd=tmp_path)
    assert "SENTRY_AUTH_TOKEN" in listed.stdout and "sentry.io" in listed.stdout
    assert value not in put.stdout + put.stderr + listed.stdout + listed.stderr
    no_key = routines("secrets", "list", env=env_for(tmp_path, None, redis_url), cwd=tmp_path)
    assert no_key.returncode == 2 and "ROUTINES_SECRET_KEY" in no_key.stderr


def test_the_web_process_logs_redact_its_secrets_uvicorn_lines_included(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    token = "api-token-that-must-not-be-logged-4f9a"
    secret = "webhook-secret-that-must-not-be-logged-77c1"
    env = env_for(tmp_path, None, redis_url, ROUTINES_API_TOKEN=token, PORT=str(port), GITHUB_WEBHOOK_SECRET=secret)
    (tmp_path / "routines").mkdir()
    web = subprocess.Popen(
        [sys.executable, "-m", "app", "web"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    body = b'{"zen": "Design for failure."}'
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"x-github-event": "ping", "x-github-delivery": "p-1", "x-hub-signature-256": signature}
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz?token={token}", timeout=2)  # an access log line
                break
            except httpx.TransportError:
                time.sleep(0.1)
        pong = httpx.post(f"http://127.0.0.1:{port}/webhooks/github", content=body, headers=headers, timeout=5)
    finally:
        web.send_signal(signal.SIGINT)
        output = web.communicate(timeout=30)[0].decode()
    assert (pong.status_code, pong.headers["x-routines-delivery"]) == (200, "pong")
    assert "GET /healthz?token=" in output and '"POST /webhooks/github HTTP/1.1" 200' in output, output
    assert token not in output and secret not in output


def test_export_writes_a_run_and_its_events_as_jsonl(tmp_path: Path, redis_url: str) -> None:
    async def make() -> None:
        store = RedisStore(aioredis.Redis.from_url(redis_url))
        await store.create_run(Run(id="r-export", routine="nightly", repo="acme/api", trigger=Trigger("api")))
        await store.append_event("r-export", Event("log", {"message": "hello"}))
        await store.redis.aclose()

    asyncio.run(make())
    (tmp_path / "routines").mkdir()
    env = env_for(tmp_path, None, redis_url)
    done = routines("export", "r-export", env=env, cwd=tmp_path)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and lines[0]["run"]["id"] == "r-export"
    assert [line["type"] for line in lines[1:]] == ["run.state", "log"] and lines[2]["data"] == {"message": "hello"}
    written = routines("export", "r-export", "--output", str(tmp_path / "r.jsonl"), env=env, cwd=tmp_path)
    assert written.returncode == 0 and (tmp_path / "r.jsonl").read_text() == done.stdout
    missing = routines("export", "nope", env=env, cwd=tmp_path)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
