"""`routines pause|resume|archive NAME`, `routines fire NAME [--text] [--repo]` (run now, through the queue),
and `routines apply FILE...` / `routines delete NAME` (routines kept in Redis, as over the API)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.cli.support import with_services
from app.core.config import Settings
from app.core.domain import Trigger
from app.core.errors import ConfigError, Refused
from app.routines import admin as routine_admin
from app.routines.admin import MAX_ROUTINE_BYTES
from app.routines.files import parse_routine
from app.services import Services
from app.store.routine_states import ACTIVE, ARCHIVED, PAUSED, RoutineStates
from app.triggers.dispatch import fire_checked, named_repo

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
    apply = sub.add_parser("apply", help="create or replace routines kept in Redis from routine files")
    apply.add_argument("files", nargs="+", type=Path)
    delete = sub.add_parser("delete", help="remove a routine kept in Redis (made by apply or the API)")
    delete.add_argument("name")


def cmd_state(settings: Settings, args: argparse.Namespace) -> int:
    async def change(services: Services) -> int:
        services.catalog.get(args.name)
        states = RoutineStates(services.store.redis, services.store.prefix)
        state = await states.set(args.name, _STATES[args.command], by="cli")
        print(f"{args.name}: {state.state}")
        return 0

    return with_services(settings, change)


def cmd_apply(settings: Settings, args: argparse.Namespace) -> int:
    """Every file is checked before any is kept; a wrong one stops them all (exit 2, `file:line: …`)."""
    parsed = []
    for path in args.files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}; pass a routine file (UTF-8 Markdown)") from None
        if len(text.encode()) > MAX_ROUTINE_BYTES:
            raise ConfigError(f"{path} is over {MAX_ROUTINE_BYTES} bytes, the most a routine kept in Redis may be")
        parsed.append((parse_routine(text, str(path)), text))

    async def keep(services: Services) -> int:
        for routine, text in parsed:
            created = await routine_admin.put_routine(services, routine, text)
            print(f"{routine.name}: {'created' if created else 'replaced'} (every web process and worker picks it up)")
        return 0

    return with_services(settings, keep)


def cmd_delete(settings: Settings, args: argparse.Namespace) -> int:
    async def remove(services: Services) -> int:
        await routine_admin.delete_routine(services, args.name)
        print(f"{args.name}: deleted (its runs stay)")
        return 0

    return with_services(settings, remove)


def cmd_fire(settings: Settings, args: argparse.Namespace) -> int:
    async def start(services: Services) -> int:
        routine = services.catalog.get(args.name)
        trigger = Trigger("cli", text=args.text, actor="cli")
        cap = settings.max_runs_per_day
        repo = named_repo(routine, args.repo)[0] if args.repo else None
        try:
            run = await fire_checked(services.store, services.pool, routine, trigger, repo, max_runs_per_day=cap)
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
    "apply": cmd_apply,
    "delete": cmd_delete,
}
