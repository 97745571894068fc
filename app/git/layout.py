"""Where a checkout's parts live beside its work tree `dest` (the private git directory, the checkpoints),
and where a mirror's lock and fetch log live."""

from __future__ import annotations

from pathlib import Path


def private_gitdir(dest: Path) -> Path:
    return dest.parent / f"{dest.name}.gitdir"


def checkpoints_dir(dest: Path) -> Path:
    """Where the run's checkpoint objects live: beside the checkout, outside the mirror every run sees."""
    return dest.parent / f"{dest.name}.checkpoints"


def mirror_lock(mirror: Path) -> Path:
    """The file whose lock a fetch of `mirror` holds (the first one until the history is complete)."""
    return mirror.with_suffix(".lock")


def fetch_log(mirror: Path) -> Path:
    """Where the fetches of `mirror` are counted: how many started, and the last that completed."""
    return mirror.with_suffix(".fetches")
