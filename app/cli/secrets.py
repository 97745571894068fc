"""`routines secrets set | list | rm`: manage the vault from the command line. Values are never printed."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from typing import Protocol, TextIO

from app.store.vault import SecretInfo, Vault, VaultError


class _Stdin(Protocol):
    def read(self) -> str: ...

    def isatty(self) -> bool: ...


def add_secrets_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add `secrets` to the CLI's subparsers (`parser.add_subparsers(dest="command")`); returns its parser.

    The namespace gets `secrets_command` ('set' | 'list' | 'rm'), `name`, and `domains` (for set).
    """
    secrets = subparsers.add_parser("secrets", help="manage vault secrets (values are read from stdin)")
    sub = secrets.add_subparsers(dest="secrets_command", required=True)
    put = sub.add_parser("set", help="create or replace a secret; the value is read from stdin, never echoed")
    put.add_argument("name", help="e.g. SENTRY_AUTH_TOKEN")
    put.add_argument("--domains", required=True, help="comma-separated hosts it may be sent to: a.com,*.b.com")
    sub.add_parser("list", help="names, domains and last update; never values")
    rm = sub.add_parser("rm", help="delete a secret")
    rm.add_argument("name")
    return secrets


async def secrets_command(
    vault: Vault, args: argparse.Namespace, *, stdin: _Stdin | None = None, out: TextIO | None = None
) -> int:
    """Run one `secrets` subcommand; returns the exit status. Errors go to stderr as `routines: message`."""
    stdin = stdin if stdin is not None else sys.stdin
    out = out if out is not None else sys.stdout
    try:
        match args.secrets_command:
            case "set":
                value = _read_value(args.name, stdin)
                info = await vault.set(args.name, value, args.domains.split(","))
                print(f"{info.name} saved; sent only to {', '.join(info.domains)}", file=out)
            case "list":
                for info in await vault.list():
                    print(_line(info), file=out)
            case "rm":
                if not await vault.delete(args.name):
                    print(
                        f"routines: secret {args.name} does not exist; `routines secrets list` shows them",
                        file=sys.stderr,
                    )
                    return 1
                print(f"{args.name} deleted", file=out)
    except VaultError as exc:
        print(f"routines: {exc}", file=sys.stderr)
        return 2
    return 0


def _read_value(name: str, stdin: _Stdin) -> str:
    if stdin.isatty():
        return getpass.getpass(f"value of {name} (not shown): ")
    return stdin.read().strip()


def _line(info: SecretInfo) -> str:
    when = dt.datetime.fromtimestamp(info.updated_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{info.name:<32} {','.join(info.domains):<40} updated {when}"
