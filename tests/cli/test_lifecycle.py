"""`routines pause|resume|archive|fire|apply|delete` as a user runs them: subprocesses over real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROUTINE = "---\nname: {name}\nrepo: acme/api\non:\n  api: true\n---\nSay hello.\n"


def env_for(tmp_path: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "ROUTINES_", "ANTHROPIC_", "GITHUB_"))}
    env.update(REDIS_URL=redis_url, ROUTINES_DIR=str(tmp_path / "routines"), ROUTINES_DATA_DIR=str(tmp_path / "data"))
    return env


def routines(tmp_path: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env_for(tmp_path, redis_url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_apply_keeps_routines_in_redis_for_every_process_and_delete_removes_them(
    tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "routines").mkdir()
    (tmp_path / "routines" / "on-disk.md").write_text(ROUTINE.format(name="on-disk"))
    drafts = tmp_path / "drafts"
    drafts.mkdir()
    (drafts / "hello.md").write_text(ROUTINE.format(name="hello"))
    (drafts / "on-disk.md").write_text(ROUTINE.format(name="on-disk"))
    (drafts / "broken.md").write_text("---\nname: broken\nrepo: acme/api\nshedule: []\n---\nx\n")

    applied = routines(tmp_path, redis_url, "apply", str(drafts / "hello.md"))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("hello: created")
    again = routines(tmp_path, redis_url, "apply", str(drafts / "hello.md"))
    assert again.stdout.startswith("hello: replaced")
    fired = routines(tmp_path, redis_url, "fire", "hello")  # another process finds it through Redis
    assert fired.returncode == 0 and "queued" in fired.stdout, fired.stderr
    token = routines(tmp_path, redis_url, "token", "hello")
    assert token.returncode == 0 and token.stdout.strip(), token.stderr
    paused = routines(tmp_path, redis_url, "pause", "hello")
    assert paused.stdout.strip() == "hello: paused"
    refused = routines(tmp_path, redis_url, "fire", "hello")
    assert refused.returncode == 1 and "refused (paused)" in refused.stderr

    broken = routines(tmp_path, redis_url, "apply", str(drafts / "hello.md"), str(drafts / "broken.md"))
    assert broken.returncode == 2 and f"{drafts / 'broken.md'}:4:" in broken.stderr and "did you mean" in broken.stderr
    assert broken.stdout == "", "a wrong file stops them all, before any is kept"
    clash = routines(tmp_path, redis_url, "apply", str(drafts / "on-disk.md"))
    assert clash.returncode == 2 and "is the file" in clash.stderr and "change the file" in clash.stderr
    not_mine = routines(tmp_path, redis_url, "delete", "on-disk")
    assert not_mine.returncode == 2 and "delete the file" in not_mine.stderr

    deleted = routines(tmp_path, redis_url, "delete", "hello")
    assert deleted.returncode == 0 and deleted.stdout.startswith("hello: deleted")
    gone = routines(tmp_path, redis_url, "fire", "hello")
    assert gone.returncode == 2 and "hello" in gone.stderr
    twice = routines(tmp_path, redis_url, "delete", "hello")
    assert twice.returncode == 2 and "no routine 'hello' was created" in twice.stderr
