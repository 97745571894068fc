"""The `routines` command: dev, web, worker, run, validate, token, runs, logs, secrets, lifecycle (--help)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli import environments as cli_environments
from app.cli import lifecycle as cli_lifecycle
from app.cli.secrets import add_secrets_parser
from app.cli.support import redis_for, with_services
from app.core.config import Settings
from app.core.domain import Event, Run, RunState, Trigger
from app.core.errors import RoutinesError
from app.core.logs import TEXT_FORMAT, configure_logging, run_scope
from app.triggers.dispatch import named_repo

if TYPE_CHECKING:
    from app.services import Services

log = logging.getLogger("routines")


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from app.web import server as web_server
    from app.web.app import create_app
    from app.worker.worker import create_worker, stop_worker

    with redis_for(settings, say=print) as s:

        async def both() -> None:
            server = uvicorn.Server(web_server.config(create_app(s), s.host, s.port, log_level="info"))
            worker = create_worker(s, handle_signals=False, own_process=True)
            print(f"Routines on {s.base_url} — routines from {s.routines_dir}, data in {s.data_dir}")
            # SIGTERM (Docker, systemd) must end here, not kill the process, or the embedded Redis is orphaned.
            # While uvicorn serves it handles SIGTERM itself, then raises it again: this handler takes that.
            terminated = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminated.set)
            web_task = asyncio.create_task(server.serve())
            worker_task = asyncio.create_task(worker.main())
            stop_task = asyncio.create_task(terminated.wait())
            # Ctrl+C: uvicorn stops, then raises SIGINT again, which asyncio.run turns into cancelling this
            # task. Runs still hold sandboxes: stop the worker as gracefully as the web server either way.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([web_task, worker_task, stop_task], return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            await stop_worker(worker, worker_task)
            await asyncio.gather(web_task, return_exceptions=True)
            stop_task.cancel()

        asyncio.run(both())
    return 0


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from app.web import server
    from app.web.app import create_app

    _require_redis(settings)
    if args.processes > 1:  # uvicorn's own supervisor: N processes accepting on one socket
        options = server.options(log_level="info", workers=args.processes, factory=True)
        uvicorn.run("app.web.app:from_environment", host=settings.host, port=settings.port, **options)
        return 0
    uvicorn.Server(server.config(create_app(settings), settings.host, settings.port, log_level="info")).run()
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from app.worker.worker import close_worker, create_worker

    _require_redis(settings)

    async def main() -> None:
        # arq's own signal handling only stops Worker.run(); we drive main() and stop it ourselves.
        worker = create_worker(settings, handle_signals=False, own_process=True)
        task = asyncio.create_task(worker.main())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("worker stopping")
        finally:
            await close_worker(worker)

    asyncio.run(main())
    return 0


def _require_redis(settings: Settings) -> None:
    if not settings.redis_url:
        raise RoutinesError("REDIS_URL is not set; set it to your Redis (redis://HOST:6379/0), or use `routines dev`")


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one routine in the foreground, printing its events; exit 0 only when it succeeded."""
    from app.core.domain import new_run_id
    from app.run.runner import execute
    from app.services import build

    with redis_for(settings, say=lambda m: print(m, file=sys.stderr)) as s:

        async def main() -> int:
            services = await build(s)
            try:
                routine = services.catalog.get(args.name)
                repo = named_repo(routine, args.repo)[0] if args.repo else None
                repo = repo or (routine.repos[0] if len(routine.repos) == 1 else None)
                if repo is None or repo == "*":
                    raise RoutinesError(f"routine {args.name!r} has several repositories; pass --repo OWNER/NAME")
                run = Run(id=new_run_id(), routine=routine.name, repo=repo, trigger=Trigger("cli", text=args.text))
                await services.store.create_run(run)
                print(f"run {run.id} — {s.run_url(run.id)}", file=sys.stderr)
                printer = asyncio.create_task(_print_events(services.store.follow(run.id), args.json))
                with run_scope(run.id):
                    final = await execute(run.id, await services.runner_deps())
                await asyncio.wait_for(printer, timeout=10)
                _print_outcome(final)
                return 0 if final.state is RunState.SUCCEEDED else 1
            finally:
                await services.close()

        return asyncio.run(main())


async def _print_events(events: AsyncIterator[Event], as_json: bool) -> None:
    async for event in events:
        print(json.dumps(event.to_json()) if as_json else _describe(event), flush=True)


def _describe(event: Event) -> str:
    d = event.data
    match event.type:
        case "run.state":
            return f"● {d['state']}" + (f" — {d['error']}" if d.get("error") else "")
        case "model.turn":
            texts = [b.get("text", "") for b in d.get("content", []) if b.get("type") == "text"]
            return f"◆ turn {d.get('turn')}: {' '.join(t.strip() for t in texts)[:300]}".rstrip()
        case "tool.call":
            return f"  ↳ {d.get('name')} {json.dumps(d.get('input'))[:300]}"
        case "tool.result":
            out = str(d.get("output", ""))
            return f"    {'✗' if d.get('is_error') else '✓'} {out[:200]!r}"
        case "run.error":
            return f"✗ {d.get('error')}"
        case _:
            return f"· {event.type} {json.dumps(d)[:300]}"


def _print_outcome(run: Run) -> None:
    print(f"\n{run.state.value}" + (f": {run.error}" if run.error else ""))
    if run.branch:
        print(f"branch: {run.branch}")
    if run.pull_request:
        print(f"pull request: {run.pull_request.url}")
    print(f"turns: {run.turns} · cost: ${run.cost_usd:.4f}")
    if run.summary:
        print(f"\n{run.summary.strip()}")


def cmd_validate(settings: Settings, args: argparse.Namespace) -> int:
    from app.routines.files import schema, validate_folder

    if args.schema:
        print(json.dumps(schema(), indent=2))
        return 0
    folder = Path(args.dir) if args.dir else settings.routines_dir
    if not folder.is_dir():
        print(f"{folder}: not a folder; pass the folder that holds your routine .md files", file=sys.stderr)
        return 2
    errors = validate_folder(folder)
    for err in errors:
        print(err, file=sys.stderr)
    count = len(list(folder.glob("*.md")))
    print(f"{count} routine files, {len(errors)} errors" if errors else f"{count} routine files, all valid")
    return 1 if errors else 0


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    from app.services import build

    with redis_for(settings, say=lambda m: print(m, file=sys.stderr)) as s:

        async def main() -> str:
            services = await build(s)
            try:
                routine = services.catalog.get(args.name)
                return await services.store.new_routine_token(args.name, routine.repos)
            finally:
                await services.close()

        token = asyncio.run(main())
    print(token)
    print(
        f"Fire it: curl -X POST -H 'Authorization: Bearer <token>' {settings.base_url}/api/routines/{args.name}/fire"
        "\nThe previous token of this routine no longer works.",
        file=sys.stderr,
    )
    return 0


def cmd_runs(settings: Settings, args: argparse.Namespace) -> int:
    return with_services(settings, lambda services: _list_runs(services, args))


async def _list_runs(services: Services, args: argparse.Namespace) -> int:
    runs = await services.store.list_runs(routine=args.routine, state=args.state, limit=args.limit)
    for run in runs:
        pr = run.pull_request.url if run.pull_request else ""
        print(f"{run.id}  {run.state.value:<10} {run.routine:<24} ${run.cost_usd:.4f}  {pr}")
    return 0


def cmd_logs(settings: Settings, args: argparse.Namespace) -> int:
    async def show(services: Services) -> int:
        store = services.store
        run = await store.get_run(args.run)
        source = store.follow(run.id) if args.follow else _aiter(await store.events(run.id))
        await _print_events(source, args.json)
        return 0

    return with_services(settings, show)


async def _aiter(items: list[Event]) -> AsyncIterator[Event]:
    for item in items:
        yield item


def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    """Stop a run: a queued one now, a running one before its next model turn."""
    from app.web.operations import cancel as cancel_run

    async def cancel(services: Services) -> int:
        run = await services.store.get_run(args.run)
        if run.state.terminal:
            print(f"run {run.id} already ended ({run.state.value})", file=sys.stderr)
            return 1
        await cancel_run(services, run)
        print(f"run {run.id}: cancel requested")
        return 0

    return with_services(settings, cancel)


def cmd_message(settings: Settings, args: argparse.Namespace) -> int:
    """Send a message the model of a live run sees at its next turn."""
    from app.web.operations import send_message

    async def send(services: Services) -> int:
        run = await services.store.get_run(args.run)
        if run.state.terminal:
            print(f"run {run.id} already ended ({run.state.value})", file=sys.stderr)
            return 1
        await send_message(services, run, args.text)
        return 0

    return with_services(settings, send)


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    """Write one run as JSONL: its record, then its events (from Redis, or from its archive)."""
    from app.store.archive import run_events, to_jsonl

    async def export(services: Services) -> int:
        run = await services.store.get_run(args.run)
        text = to_jsonl(run, await run_events(services.store, run))
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text, encoding="utf-8")
            print(f"run {run.id}: {text.count(chr(10)) - 1} events written to {args.output}", file=sys.stderr)
        return 0

    return with_services(settings, export)


def cmd_secrets(settings: Settings, args: argparse.Namespace) -> int:
    from app.cli.secrets import secrets_command
    from app.store.vault import Vault, secret_key

    key = secret_key(settings.secret_key)

    async def run(services: Services) -> int:
        return await secrets_command(Vault(services.pool, key), args)

    return with_services(settings, run)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="routines", description="Run repo-bound AI coding routines.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="web + worker in one process (embedded Redis when REDIS_URL is unset)")
    web = sub.add_parser("web", help="the web process (webhooks, API, run pages)")
    web.add_argument("--processes", type=int, default=1, help="web processes sharing the port (default 1)")
    sub.add_parser("worker", help="a worker process (runs routines)")
    run = sub.add_parser("run", help="run a routine now, in the foreground")
    run.add_argument("name")
    run.add_argument("--text", help="input for the model, like the `text` of an API call")
    run.add_argument("--repo", help="repository, when the routine has several")
    run.add_argument("--json", action="store_true", help="print events as JSON lines")
    val = sub.add_parser("validate", help="check routine files (default: ROUTINES_DIR)")
    val.add_argument("dir", nargs="?")
    val.add_argument("--schema", action="store_true", help="print the JSON Schema of the front matter")
    tok = sub.add_parser("token", help="create (or rotate) a routine's API token")
    tok.add_argument("name")
    runs = sub.add_parser("runs", help="list runs, newest first")
    runs.add_argument("--routine")
    runs.add_argument("--state")
    runs.add_argument("--limit", type=int, default=20)
    logs = sub.add_parser("logs", help="print a run's event log")
    logs.add_argument("run")
    logs.add_argument("-f", "--follow", action="store_true", help="follow a live run")
    logs.add_argument("--json", action="store_true")
    export = sub.add_parser("export", help="write a run and its event log as JSONL (stdout, or --output FILE)")
    export.add_argument("run")
    export.add_argument("-o", "--output", type=Path, default=None)
    cancel = sub.add_parser("cancel", help="stop a run (partial work is delivered as an incomplete draft)")
    cancel.add_argument("run")
    message = sub.add_parser("message", help="send a message the run's model sees at its next turn")
    message.add_argument("run")
    message.add_argument("text")
    add_secrets_parser(sub)
    cli_lifecycle.add_parsers(sub)
    cli_environments.add_parser(sub)
    return p


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "dev": cmd_dev,
    "web": cmd_web,
    "worker": cmd_worker,
    "run": cmd_run,
    "validate": cmd_validate,
    "token": cmd_token,
    "runs": cmd_runs,
    "logs": cmd_logs,
    "export": cmd_export,
    "secrets": cmd_secrets,
    "cancel": cmd_cancel,
    "message": cmd_message,
    "env": cli_environments.cmd_env,
}
COMMANDS.update(cli_lifecycle.COMMANDS)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=TEXT_FORMAT)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_format, settings.own_secrets())
        return COMMANDS[args.command](settings, args)
    except RoutinesError as exc:
        print(f"routines: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
