"""A run's environment (`environment:` in its routine): the image as the sandbox's root, the setup run before
the agent's first turn, and the saved result of that setup, reused while its inputs do not change.

`prepare` (before the sandbox opens) resolves a devcontainer from the base commit's git objects, has the
image pulled (the worker pulls, never the sandbox) and finds a saved setup for the cache key: the image
digest, the setup commands and variables, and the git blob ids of the `cache` files at the base commit.
`ready` (the hands are up, the agent is not) restores that saved setup, or runs the setup commands and
saves what they made. A failure in either ends the run `failed` with what to fix, before any model request.

A run working on a pull request's head (a review or a follow-up), or resumed on a tree its agent already
changed, uses saved setups but never saves one:
the head may be anyone's code, and what its setup leaves must not reach the runs that come after.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import shlex
import shutil
import socket
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from app.core.domain import Environment
from app.core.errors import ConfigError, RoutinesError, SandboxError
from app.core.ports import Checkout, Hands, Place, PulledImage
from app.git.workspace import remove_tree
from app.hands.stash import STASH
from app.routines.devcontainer import LOCKFILES, MAX_BYTES, PATHS, parse_devcontainer
from app.run.context import RunContext, RunnerDeps, Sandboxes
from app.sandbox.egress.policy import forbidden_reason, host_matches
from app.sandbox.images import registry_host

MAX_TAIL_CHARS = 2_000
SPARES = "spares"  # under the setups folder: saved setups unpacked ahead, one per key

log = logging.getLogger(__name__)


class SetupFailed(SandboxError):
    """A setup command ended with an error; the message has its output's tail."""


@dataclass
class Readied:
    environment: Environment
    place: Place
    exchange: Path
    image: PulledImage | None = None
    key: str | None = None
    saved: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    spared: int | None = None  # entries a spare put in place before the sandbox started (None: no spare)
    spare: asyncio.Task[None] | None = None  # making the next run's spare

    def unsaved(self) -> None:
        """Neither use nor save a saved setup (the sandbox has nowhere to exchange one)."""
        if self.saved is not None:
            (self.exchange / STASH).unlink(missing_ok=True)
        self.key, self.saved = None, None


async def prepare(ctx: RunContext, deps: RunnerDeps, run_dir: Path) -> Readied | None:
    environment = ctx.routine.environment
    if environment is None or ctx.checkout is None:
        return None
    if environment.devcontainer:
        environment = _devcontainer(ctx.checkout)
        if not _own_tree(ctx) and environment.image is not None:
            await _public_registry(environment.image)
    image: PulledImage | None = None
    timings: dict[str, float] = {}
    if environment.image is not None:
        if deps.images is None:
            raise ConfigError("this worker pulls no images (no image store); run it with the bwrap sandbox")
        login = await _login(ctx, deps, environment)
        image = await deps.images.ensure(environment.image, login, holder=ctx.run.id)
        timings["image_s"] = round(image.seconds, 3)
        pulled = {"reference": image.reference, "digest": image.digest, "pulled": image.pulled}
        await ctx.events.emit("environment.image", {**pulled, "seconds": timings["image_s"]})
    home, exchange = run_dir / "home", run_dir / "exchange"
    env = (*(image.env if image else ()), *environment.env)
    place = Place(rootfs=image.rootfs if image else None, env=env, home=home, exchange=exchange)
    readied = Readied(environment, place, exchange, image, timings=timings)
    try:
        await _find_saved(ctx, deps, run_dir, readied)
    except BaseException:
        await release(deps, ctx, readied)  # let go of the image it holds
        raise
    return readied


async def _find_saved(ctx: RunContext, deps: RunnerDeps, run_dir: Path, readied: Readied) -> None:
    """Make the run's $HOME and exchange folders, and find its saved setup: a spare moved into place, or the
    saved file copied for the hands to unpack."""
    environment, exchange = readied.environment, readied.exchange
    for folder in (run_dir / "home", exchange):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if ctx.checkout is None:
        return
    if environment.setup and environment.cache and deps.settings.setups_dir is not None:
        readied.key = _key(ctx.checkout, ctx, environment, readied.image)
        setups = deps.settings.setups_dir
        saved = setups / f"{readied.key}.tar"
        began = time.monotonic()
        readied.spared = await asyncio.to_thread(_claim_spare, setups, readied.key, run_dir, ctx.checkout.path)
        if readied.spared is not None:
            with contextlib.suppress(FileNotFoundError):  # pruned meanwhile: the spare is still whole
                os.utime(saved)
            readied.saved = saved
            readied.timings["restore_s"] = round(time.monotonic() - began, 3)
        elif await asyncio.to_thread(_take, saved, exchange / STASH):
            readied.saved = saved


async def ready(ctx: RunContext, deps: RunnerDeps, hands: Hands, readied: Readied) -> None:
    """Restore the saved setup, or run the setup (and save it); then say the environment is ready."""
    environment = readied.environment
    cache = "none"
    if readied.saved is not None:
        source = "spare"
        files = readied.spared
        if files is None:
            began = time.monotonic()
            files, source = await hands.unpack(), "saved setup"
            readied.timings["restore_s"] = round(time.monotonic() - began, 3)
        cache = "hit"
        await hands.ignore(await _made(hands, readied))
        await ctx.events.emit("environment.restored", {"key": readied.key, "files": files, "from": source})
        _make_spare_soon(deps, readied)
    elif environment.setup:
        before = set(await hands.names())
        began = time.monotonic()
        for command in environment.setup:
            await _run_setup(ctx, deps, hands, command)
        readied.timings["setup_s"] = round(time.monotonic() - began, 3)
        created = [name for name in await hands.names() if name not in before]
        await hands.ignore(created)
        cache = "miss" if readied.key is not None else "none"
        if readied.key is not None and deps.settings.setups_dir is not None and may_save(ctx):
            began = time.monotonic()
            try:
                size = await hands.pack(created, deps.settings.setup_cache_bytes // 4)
                await asyncio.to_thread(_keep, readied.exchange, deps.settings.setups_dir, readied.key, created)
            except (RoutinesError, OSError) as exc:  # too big, or unreadable: the run goes on, unsaved
                await ctx.events.emit("environment.not_saved", {"key": readied.key, "reason": str(exc)[:500]})
            else:
                await asyncio.to_thread(prune_setups, deps.settings.setups_dir, deps.settings.setup_cache_bytes)
                readied.timings["save_s"] = round(time.monotonic() - began, 3)
                await ctx.events.emit("environment.saved", {"key": readied.key, "bytes": size, "made": created})
                _make_spare_soon(deps, readied)
    image = readied.image
    await ctx.events.emit(
        "environment.ready",
        {
            "image": image.reference if image else None,
            "digest": image.digest if image else None,
            "cache": cache,
            "seconds": readied.timings,
            "source": "devcontainer" if environment.devcontainer else "routine",
        },
    )


def sandbox_env(readied: Readied | None) -> dict[str, str]:
    """The routine's (or devcontainer's) variables for the agent's shell."""
    return dict(readied.environment.env) if readied is not None else {}


async def release(deps: RunnerDeps, ctx: RunContext, readied: Readied | None) -> None:
    """Remove the run's $HOME and exchange folder (no process of the sandbox is left), let go of the image,
    and see the next run's spare made (it was made while this run worked)."""
    if readied is None:
        return
    for folder in (readied.place.home, readied.exchange):  # $HOME may hold gigabytes of a setup's caches
        if folder is not None:
            await asyncio.to_thread(remove_tree, folder)
    if readied.image is not None and deps.images is not None:
        deps.images.release(readied.image.digest, ctx.run.id)
    if readied.spare is not None:
        try:
            await readied.spare
        except Exception as exc:  # a spare is an optimisation: the next run unpacks in its sandbox instead
            log.warning("run %s: the next run's spare of its setup was not made: %s", ctx.run.id, exc)


def _make_spare_soon(deps: RunnerDeps, readied: Readied) -> None:
    setups, key = deps.settings.setups_dir, readied.key
    if setups is not None and key is not None:
        readied.spare = asyncio.create_task(_make_spare(deps.sandboxes, setups, key))


async def _run_setup(ctx: RunContext, deps: RunnerDeps, hands: Hands, command: str) -> None:
    began = time.monotonic()
    # One quoted word evaluated in a subshell: a `cd`, a variable, a function, an `exit` or a stray `)` of
    # the setup never changes the agent's shell.
    result = await hands.run(f"( eval {shlex.quote(command)} )", deps.settings.command_timeout_s)
    tail = result.output[-MAX_TAIL_CHARS:]
    data = {"command": command, "exit_code": result.exit_code, "seconds": round(time.monotonic() - began, 3)}
    await ctx.events.emit("environment.setup", {**data, "output": tail, "timed_out": result.timed_out})
    if result.timed_out or result.exit_code not in (0, None):
        why = f"took over {deps.settings.command_timeout_s:g} s" if result.timed_out else f"exit {result.exit_code}"
        raise SetupFailed(
            f"the environment's setup command {command!r} failed ({why}); fix the setup or the repository. "
            f"Its output ended with:\n{tail[-1000:]}"
        )


async def _made(hands: Hands, readied: Readied) -> list[str]:
    """What a restored setup put in the work tree (its saved names), to keep out of the run's commits."""
    listed = readied.saved.with_suffix(".json") if readied.saved is not None else None
    if listed is None or not listed.is_file():
        return []
    made = json.loads(await asyncio.to_thread(listed.read_text)).get("made") or []
    present = set(await hands.names())
    return [str(name) for name in made if name in present]


def _devcontainer(checkout: Checkout) -> Environment:
    for path in PATHS:
        text = checkout.base_file(path, MAX_BYTES)
        if text is not None:
            present = {name for name in LOCKFILES if checkout.base_entry(name) is not None}
            return parse_devcontainer(text.decode("utf-8", "replace"), path, present)
    raise ConfigError(
        "the routine says environment: devcontainer, and the repository has no .devcontainer/devcontainer.json "
        f"at {checkout.base_commit[:12]}; add one, or give the routine environment: {{image: …}}"
    )


async def _login(ctx: RunContext, deps: RunnerDeps, environment: Environment) -> str | None:
    if environment.credentials is None:
        return None
    if deps.connector_secret is None:
        raise ConfigError(
            f"environment.credentials names {environment.credentials}, and the vault is off; set ROUTINES_SECRET_KEY"
        )
    secret = await deps.connector_secret.get(environment.credentials)
    ctx.events.redactor.add(environment.credentials, secret.value)
    host = registry_host(environment.image or "").rpartition(":")[0] or registry_host(environment.image or "")
    if not host_matches(host.lower(), secret.domains):
        raise ConfigError(
            f"the secret {environment.credentials} may only be sent to {', '.join(secret.domains)}, not to the "
            f"registry {host}; add {host} to its domains with `routines secrets set`"
        )
    return secret.value


def _key(checkout: Checkout, ctx: RunContext, environment: Environment, image: PulledImage | None) -> str:
    """What a saved setup depends on: the image, the commands and variables, and the cache paths' git ids at
    the base commit (a file's contents, a folder's whole tree, a link's target)."""
    digest = hashlib.sha256()
    parts = {
        "routine": ctx.routine.name,
        "repo": ctx.run.repo,
        "image": image.digest if image else None,
        "setup": list(environment.setup),
        "env": list(environment.env),
    }
    digest.update(json.dumps(parts, sort_keys=True).encode())
    for path in environment.cache:
        entry = checkout.base_entry(str(PurePosixPath(path)))
        digest.update(path.encode() + b"\0" + (entry or "-").encode() + b"\0")
    return digest.hexdigest()


def _own_tree(ctx: RunContext) -> bool:
    """Whether the run works on its routine's own base, not on code that may be anyone's (a pull request's
    head, a follow-up's branch)."""
    return ctx.pull is None and not ctx.run.trigger.data.get("follow_up")


async def _public_registry(reference: str) -> None:
    """Refuse an image whose registry is not on the public internet: a devcontainer on a pull request's head
    must not make the worker reach its own network (metadata services, internal hosts)."""
    host = registry_host(reference)
    name = urlsplit(f"//{host}").hostname or host
    if name == "docker.io":
        return
    try:
        found = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"the registry {host} of the devcontainer's image cannot be resolved ({exc})") from None
    for *_, address in found:
        reason = forbidden_reason(ipaddress.ip_address(address[0]))
        if reason is not None:
            raise ConfigError(
                f"the devcontainer on this pull request names an image on {host}, which is not public ({reason}); "
                "a run on a pull request's head pulls only from public registries — name the image in the routine's "
                "environment: instead"
            )


def may_save(ctx: RunContext) -> bool:
    """Whether this run's setup result may be kept for later runs: not when it ran on code that may be
    anyone's (a pull request's head, a follow-up's branch) or on a tree the agent already worked on (a run
    resumed from its checkpoint after its worker died)."""
    return _own_tree(ctx) and ctx.history is None


def _take(saved: Path, into: Path) -> bool:
    """Put a copy of a saved setup where the hands process reads it (a copy: the hands may write there,
    and the saved file is every later run's); False: none."""
    try:
        shutil.copyfile(saved, into, follow_symlinks=False)
        os.utime(saved)
    except FileNotFoundError:
        return False
    return True


def _keep(exchange: Path, setups: Path, key: str, made: list[str]) -> None:
    """Keep the stash the hands wrote in the exchange folder as the saved setup `key`: only a regular file,
    opened without following a link, copied into a file of the worker's own and renamed into place."""
    setups.mkdir(parents=True, exist_ok=True)
    fd = os.open(exchange / STASH, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as stash:
        if not stat.S_ISREG(os.fstat(stash.fileno()).st_mode):
            raise SandboxError("the saved setup the sandbox left is not a regular file")
        with tempfile.NamedTemporaryFile(dir=setups, prefix=f".{key[:16]}-", delete=False) as copy:
            shutil.copyfileobj(stash, copy, 1 << 20)
    (setups / f"{key}.json").write_text(json.dumps({"made": made, "saved_at": time.time()}))
    os.replace(copy.name, setups / f"{key}.tar")
    (exchange / STASH).unlink(missing_ok=True)


async def _make_spare(sandboxes: Sandboxes, setups: Path, key: str) -> None:
    """Unpack the saved setup `key` into `spares/<key>` for the next run to move into place in no time.

    The unpacking runs in a sandbox of its own (`Sandboxes.unpack`): the worker never extracts what a setup
    made. The folder is renamed into place only when complete."""
    spares, saved = setups / SPARES, setups / f"{key}.tar"
    if (spares / key).exists() or not saved.is_file():
        return
    spares.mkdir(parents=True, exist_ok=True)
    making = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f".{key[:16]}-", dir=spares))
    try:
        for part in ("work", "home", "exchange"):
            (making / part).mkdir()
        if not await asyncio.to_thread(_take, saved, making / "exchange" / STASH):
            return
        if await sandboxes.unpack(making) is None:
            return
        await asyncio.to_thread(remove_tree, making / "exchange")
        with contextlib.suppress(OSError):  # another run's spare got there first
            os.rename(making, spares / key)
    finally:
        await asyncio.to_thread(remove_tree, making)


def _claim_spare(setups: Path, key: str, run_dir: Path, workdir: Path) -> int | None:
    """Move the spare of `key` into this run: its work-tree entries into `workdir` (never over an entry the
    checkout has) and its $HOME part into `run_dir/home`; how many entries, or None when there is none.

    The spare is claimed by one rename, so two runs never share one. Nothing here follows a link: entries
    are moved by name between folders opened with O_NOFOLLOW, before any sandbox process exists."""
    claimed = run_dir / "restored"
    try:
        os.rename(setups / SPARES / key, claimed)
    except OSError:
        return None
    moved = 0
    try:
        for source, target in ((claimed / "work", workdir), (claimed / "home", run_dir / "home")):
            moved += _move_entries(source, target)
    finally:
        remove_tree(claimed)
    return moved


def _move_entries(source: Path, target: Path) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    src, dst = os.open(source, flags), os.open(target, flags)
    moved = 0
    try:
        for name in os.listdir(src):
            if name == ".git":
                continue
            try:
                os.lstat(name, dir_fd=dst)
                continue  # the checkout has it: the repository's entry wins
            except FileNotFoundError:
                pass
            os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
            moved += 1
    finally:
        os.close(src)
        os.close(dst)
    return moved


@dataclass(frozen=True)
class SavedSetup:
    key: str
    size_bytes: int
    used_at: float  # last saved or restored (epoch seconds)


def saved_setups(setups: Path) -> list[SavedSetup]:
    """The saved setups in `setups`, least recently used first."""
    found = []
    for path in setups.glob("*.tar") if setups.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            found.append(SavedSetup(path.stem, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda s: s.used_at)


def prune_setups(setups: Path, cap_bytes: int) -> list[SavedSetup]:
    """Drop the least recently used saved setups until they fit `cap_bytes`; what was dropped."""
    saved = saved_setups(setups)
    total = sum(s.size_bytes for s in saved)
    dropped = []
    for setup in saved:
        if total <= cap_bytes:
            break
        total -= setup.size_bytes
        (setups / f"{setup.key}.tar").unlink(missing_ok=True)
        (setups / f"{setup.key}.json").unlink(missing_ok=True)
        remove_tree(setups / SPARES / setup.key)
        dropped.append(setup)
    spares = setups / SPARES
    for entry in list(spares.iterdir()) if spares.is_dir() else []:
        unfinished = entry.name.startswith(".") and time.time() - entry.lstat().st_mtime > 3600
        if unfinished or not (entry.name.startswith(".") or (setups / f"{entry.name}.tar").exists()):
            remove_tree(entry)  # left by a stopped worker, or its saved setup is gone
    return dropped
