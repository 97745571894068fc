"""Real git for tests: a `git` that ignores the machine's config, commits, and a run-style snapshot."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from app.core.ports import Staged
from app.git.workspace import Workspace
from app.sandbox.local import LocalSandbox

GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Dev",
    "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "Dev",
    "GIT_COMMITTER_EMAIL": "dev@example.com",
}


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git with a fixed identity and no global or system config; its stdout, stripped."""
    done = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def commit_file(repo: Path, name: str, text: str) -> str:
    """Write `name` in the work tree of `repo`, commit everything, and return the new commit's id."""
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", f"add {name}", cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


async def snap(ws: Workspace) -> Staged:
    """Take a snapshot of `ws` the way a run does, through a hands process (here the local sandbox's)."""
    hands = await LocalSandbox().hands(ws.path, {})
    try:
        return await ws.snapshot(hands)
    finally:
        await hands.close()
