"""A run's environment on the worker's side: spares of a saved setup (unpacked ahead, moved into a run by
name before its sandbox starts, never over what the checkout has, never shared by two runs), and which
runs may save a setup's result for the runs after them."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from pathlib import Path

import pytest

from app.core.domain import Event, Routine, Run, Trigger
from app.core.errors import ConfigError
from app.core.ports import PullInfo
from app.run.context import RunContext
from app.run.environment import SPARES, _claim_spare, _make_spare, _public_registry, may_save, prune_setups
from app.sandbox.boundary import Boundaries
from app.sandbox.bwrap import sandbox_available

SANDBOXES = Boundaries(kind="bwrap", max_output_bytes=30_000, vault=None)
pytestmark = pytest.mark.skipif(sandbox_available() is not None, reason=str(sandbox_available()))


def saved_setup(setups: Path, key: str, entries: dict[str, bytes | str]) -> None:
    """A saved setup tar: path → bytes (a file) or str (a symlink with that text, as a hostile one)."""
    setups.mkdir(parents=True, exist_ok=True)
    with tarfile.open(setups / f"{key}.tar", "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def make_spare(setups: Path, key: str) -> None:
    asyncio.run(_make_spare(SANDBOXES, setups, key))


def run_folder(tmp_path: Path, name: str) -> tuple[Path, Path]:
    run_dir = tmp_path / name
    (run_dir / "home").mkdir(parents=True)
    (run_dir / "repo").mkdir()
    return run_dir, run_dir / "repo"


def test_a_spare_moves_into_one_run_and_keeps_what_the_checkout_has(tmp_path: Path) -> None:
    setups = tmp_path / "setups"
    saved_setup(
        setups,
        "k1",
        {
            "workspace/node_modules/dep/index.js": b"dep",
            "workspace/README.md": b"from the setup",
            "workspace/.git/config": b"[core]\\nhooksPath=/tmp",
            "home/.cache/tool": b"warm",
        },
    )
    make_spare(setups, "k1")
    assert (setups / SPARES / "k1" / "work" / "node_modules").is_dir()
    assert not (setups / SPARES / "k1" / "work" / ".git").exists()

    run_dir, repo = run_folder(tmp_path, "run-a")
    (repo / "README.md").write_text("the repository's own\n")
    assert _claim_spare(setups, "k1", run_dir, repo) == 2  # node_modules and .cache
    assert (repo / "node_modules" / "dep" / "index.js").read_bytes() == b"dep"
    assert (repo / "README.md").read_text() == "the repository's own\n"
    assert (run_dir / "home" / ".cache" / "tool").read_bytes() == b"warm"
    assert not (run_dir / "restored").exists()

    other_dir, other_repo = run_folder(tmp_path, "run-b")
    assert _claim_spare(setups, "k1", other_dir, other_repo) is None  # taken: this run unpacks in its sandbox
    assert os.listdir(other_repo) == []


def test_a_hostile_saved_setup_cannot_reach_outside_the_spare(tmp_path: Path) -> None:
    setups, outside = tmp_path / "setups", tmp_path / "outside"
    outside.mkdir()
    saved_setup(
        setups,
        "k2",
        {
            "workspace/ok": b"ok",
            "workspace/escape": "../../../outside",  # a link is kept as a link, never written through
            "workspace/escape/planted": b"x",
            "workspace/../../outside/up": b"x",
            "workspace/home/.bashrc": b"only the work tree's",  # once, into the work tree, not also $HOME
            "workspace/venv/bin/python": "/usr/bin/python3",  # a virtualenv's absolute link survives
            "home/.cache/tool": b"warm",
        },
    )
    make_spare(setups, "k2")
    spare = setups / SPARES / "k2"
    assert os.listdir(outside) == [] and not (tmp_path / "up").exists()
    assert (spare / "work" / "ok").read_bytes() == b"ok"
    assert (spare / "work" / "escape").is_dir() and not (spare / "work" / "escape").is_symlink()
    assert (spare / "work" / "home" / ".bashrc").exists() and not (spare / "home" / ".bashrc").exists()
    assert os.readlink(spare / "work" / "venv" / "bin" / "python") == "/usr/bin/python3"
    assert (spare / "home" / ".cache" / "tool").read_bytes() == b"warm"


def test_pruning_a_saved_setup_drops_its_spare(tmp_path: Path) -> None:
    setups = tmp_path / "setups"
    saved_setup(setups, "k3", {"workspace/a": b"a"})
    make_spare(setups, "k3")
    assert [s.key for s in prune_setups(setups, 0)] == ["k3"]
    assert not (setups / SPARES / "k3").exists() and not (setups / "k3.tar").exists()


def test_only_a_run_on_its_own_base_saves_its_setup_for_later_runs() -> None:
    routine = Routine(name="deps", repo="acme/api", prompt="p")

    def context(trigger: Trigger, *, resumed: bool = False) -> RunContext:
        history = [Event("run.state", {"state": "running"})] if resumed else None
        return RunContext(Run("r1", "deps", "acme/api", trigger), routine, events=None, history=history)  # type: ignore[arg-type]

    assert may_save(context(Trigger("schedule")))
    assert not may_save(context(Trigger("github", data={"follow_up": True, "branch": "routines/deps/r0"})))
    assert not may_save(context(Trigger("schedule"), resumed=True))  # the agent already changed that tree
    review = context(Trigger("github"))
    review.pull = PullInfo(7, "https://github.test/acme/api/pull/7", "fork-branch", "a" * 40, "main", "b" * 40)
    assert not may_save(review)  # a pull request's head may be anyone's code


def test_a_devcontainer_on_a_pull_request_pulls_only_from_public_registries() -> None:
    for reference in ("127.0.0.1:5000/acme/tools:1", "localhost/acme/tools:1", "169.254.169.254/x:1"):
        with pytest.raises(ConfigError, match="not public"):
            asyncio.run(_public_registry(reference))
    asyncio.run(_public_registry("node:22-bookworm"))  # Docker Hub
