"""`routines pause|resume|archive NAME` and `routines fire NAME [--text] [--repo]` (run now, through the queue)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from app.cli_support import with_services
from app.config import Settings
from app.dispatch import fire_checked
from app.domain import Trigger
from app.lifecycle import ACTIVE, ARCHIVED, PAUSED, Lifecycle, Refused
from app.services import Services

_STATES = {"pause": PAUSED, "resume": ACTIVE, "archive": ARCHIVED}


def add_parsers(sub: Any) -> None:
    """Add the lifecycle commands to the `routines` subparsers."""
    for command, help_text in (
        ("pause", "stop a routine from firing until it is resumed"),
        ("resume", "let a paused or archived routine fire again"),
        ("archive", "retire a routine: it no longer fires"),
    ):
        sub.add_parser(command, help=help_text).add_argument("name")
    fire = sub.add_parser("fire", help="start a run now, through the queue (a worker runs it)")
    fire.add_argument("name")
    fire.add_argument("--text", help="input for the model, like the `text` of an API call")
    fire.add_argument("--repo", help="repository, when the routine has several")


def cmd_state(settings: Settings, args: argparse.Namespace) -> int:
    async def change(services: Services) -> int:
        services.catalog.get(args.name)
        life = Lifecycle(services.store.redis, services.store.prefix)
        state = await life.set_state(args.name, _STATES[args.command], by="cli")
        print(f"{args.name}: {state.state}")
        return 0

    return with_services(settings, change)


def cmd_fire(settings: Settings, args: argparse.Namespace) -> int:
    async def start(services: Services) -> int:
        routine = services.catalog.get(args.name)
        trigger = Trigger("cli", text=args.text, actor="cli")
        cap = settings.max_runs_per_day
        try:
            run = await fire_checked(services.store, services.pool, routine, trigger, args.repo, max_runs_per_day=cap)
        except Refused as exc:
            print(f"routines: refused ({exc.limit}): {exc}", file=sys.stderr)
            return 1
        print(f"run {run.id} queued — {settings.run_url(run.id)}")
        return 0

    return with_services(settings, start)


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "pause": cmd_state,
    "resume": cmd_state,
    "archive": cmd_state,
    "fire": cmd_fire,
}
