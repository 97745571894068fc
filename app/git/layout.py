"""Where a checkout's parts live beside its work tree `dest`: the private git directory and the checkpoints."""

from __future__ import annotations

from pathlib import Path


def private_gitdir(dest: Path) -> Path:
    return dest.parent / f"{dest.name}.gitdir"


def checkpoints_dir(dest: Path) -> Path:
    """Where the run's checkpoint objects live: beside the checkout, outside the mirror every run sees."""
    return dest.parent / f"{dest.name}.checkpoints"
