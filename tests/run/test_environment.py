"""A run's environment on the worker's side: spares of a saved setup (unpacked ahead, moved into a run by
name before its sandbox starts, never over what the checkout has, never shared by two runs), and which
runs may save a setup's result for the runs after them."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from app.core.domain import Event, Routine, Run, Trigger
from app.core.ports import PullInfo
from app.run.context import RunContext
from app.run.environment import SPARES, _claim_spare, _make_spare, may_save, prune_setups


def saved_setup(setups: Path, key: str, entries: dict[str, bytes | None]) -> None:
    """A saved setup tar: path → bytes (a file) or None (a symlink to ../../etc/passwd, as a hostile one)."""
    setups.mkdir(parents=True, exist_ok=True)
    with tarfile.open(setups / f"{key}.tar", "w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


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
    _make_spare(setups, "k1")
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
    setups = tmp_path / "setups"
    saved_setup(setups, "k2", {"workspace/escape": None, "workspace/../../outside": b"x", "workspace/ok": b"ok"})
    with pytest.raises(tarfile.FilterError):  # the data filter refuses; the run that made it logs why
        _make_spare(setups, "k2")
    assert not (tmp_path / "outside").exists() and not (setups / "outside").exists()
    assert not (setups / SPARES / "k2").exists()
    assert [p.name for p in (setups / SPARES).iterdir()] == []


def test_pruning_a_saved_setup_drops_its_spare(tmp_path: Path) -> None:
    setups = tmp_path / "setups"
    saved_setup(setups, "k3", {"workspace/a": b"a"})
    _make_spare(setups, "k3")
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
