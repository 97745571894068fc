"""`routines env ls | prune`: the environments' images this machine has pulled and the setups it saved.

Both live under ROUTINES_DATA_DIR/environments, per machine: a worker pulls an image once and every run on
that machine shares it. `prune` drops the least recently used until both fit their caps
(ROUTINES_IMAGE_CACHE_GB, ROUTINES_SETUP_CACHE_GB), or, with `--all`, everything no live run holds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any, TextIO

from app.core.config import Settings
from app.run.environment import prune_setups, saved_setups
from app.sandbox.images import ImageStore


def add_parser(sub: Any) -> None:
    env = sub.add_parser("env", help="list or prune the environments' pulled images and saved setups")
    cmds = env.add_subparsers(dest="env_command", required=True)
    cmds.add_parser("ls", help="images (reference, digest, size, last use, runs holding it) and saved setups")
    prune = cmds.add_parser("prune", help="drop the least recently used until both caches fit their caps")
    prune.add_argument("--all", action="store_true", help="drop every image and setup no live run holds")


def cmd_env(settings: Settings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    store = ImageStore(settings.images_folder, cap_bytes=int(settings.image_cache_gb * 1024**3))
    setups = settings.setups_folder
    if args.env_command == "ls":
        images = store.images()
        print(f"images in {store.root}: {len(images)}, {_size(sum(i.size_bytes for i in images))}", file=out)
        for image in images:
            held = f", held by {image.runs} run(s)" if image.runs else ""
            size, used = _size(image.size_bytes), _when(image.used_at)
            print(f"  {image.reference}  {image.digest[:19]}  {size}  used {used}{held}", file=out)
        saved = saved_setups(setups)
        print(f"saved setups in {setups}: {len(saved)}, {_size(sum(s.size_bytes for s in saved))}", file=out)
        for setup in saved:
            print(f"  {setup.key[:16]}  {_size(setup.size_bytes)}  used {_when(setup.used_at)}", file=out)
        return 0
    image_cap = 0 if args.all else None
    setup_cap = 0 if args.all else int(settings.setup_cache_gb * 1024**3)
    gone = store.prune(cap_bytes=image_cap)
    dropped = prune_setups(setups, setup_cap)
    freed = sum(i.size_bytes for i in gone) + sum(s.size_bytes for s in dropped)
    print(f"removed {len(gone)} image(s) and {len(dropped)} saved setup(s), {_size(freed)} freed", file=out)
    return 0


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
