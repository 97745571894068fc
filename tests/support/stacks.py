"""Stacks of the test servers for tests that execute runs themselves (no worker)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from app.testing.stack import Stack, running_stack


@contextlib.contextmanager
def api_routines(tmp_path: Path, redis_url: str, names: Iterable[str], repo: str = "acme/app") -> Iterator[Stack]:
    """A stack without a worker whose routines `names` are fired by the API on `repo` (which the test
    GitHub serves) and send the model `[script:<name>]`, so each finds its own script."""
    folder = tmp_path / "routines"
    folder.mkdir()
    for name in names:
        (folder / f"{name}.md").write_text(f"---\nname: {name}\nrepo: {repo}\non:\n  api: true\n---\n[script:{name}]\n")
    with running_stack(tmp_path, redis_url, routines_dir=folder, worker=False) as stack:
        stack.github.add_repo(repo, stack.installation)
        yield stack
