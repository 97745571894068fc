"""`routines env ls | prune` as a user runs them: a subprocess over a data folder holding an image and saved
setups (written as the worker writes them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

DIGEST = "sha256:" + "ab" * 32


def routines(data: Path, *args: str, cap_gb: str = "10") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "ROUTINES_"))}
    env.update(ROUTINES_DATA_DIR=str(data), ROUTINES_IMAGE_CACHE_GB=cap_gb, ROUTINES_SETUP_CACHE_GB="0.01")
    return subprocess.run([sys.executable, "-m", "app", "env", *args], env=env, capture_output=True, text=True)


def test_ls_shows_images_and_setups_and_prune_drops_what_no_run_holds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    image = data / "environments" / "images" / DIGEST.removeprefix("sha256:")
    (image / "rootfs" / "bin").mkdir(parents=True)
    (image / "rootfs" / "bin" / "tool").write_bytes(b"x" * 5000)
    record = {"reference": "node:22", "digest": DIGEST, "env": [], "size_bytes": 5000, "pulled_at": time.time()}
    (image / "image.json").write_text(json.dumps(record))
    (image / "runs").mkdir()
    (image / "runs" / "run-1").touch()
    setups = data / "environments" / "setups"
    setups.mkdir(parents=True)
    for key, size in (("old" * 8, 8_000_000), ("new" * 8, 4_000_000)):
        (setups / f"{key}.tar").write_bytes(b"\0" * size)
        time.sleep(0.01)

    listed = routines(data, "ls")
    assert listed.returncode == 0, listed.stderr
    assert "node:22  sha256:abababababab  5.0 KB" in listed.stdout and "held by 1 run(s)" in listed.stdout
    assert "saved setups in" in listed.stdout and "8.0 MB" in listed.stdout and "4.0 MB" in listed.stdout

    pruned = routines(data, "prune")  # setups over their 10 MB cap: the least recently used goes
    assert "removed 0 image(s) and 1 saved setup(s), 8.0 MB freed" in pruned.stdout, pruned.stdout
    assert sorted(p.name for p in setups.iterdir()) == ["new" * 8 + ".tar"]

    everything = routines(data, "prune", "--all")
    assert "removed 0 image(s) and 1 saved setup(s)" in everything.stdout  # the held image stays
    (image / "runs" / "run-1").unlink()
    assert "removed 1 image(s)" in routines(data, "prune", "--all").stdout
    assert not image.exists()
