"""A run's boundary: its sandbox, and the egress proxy, CA and placeholders that are its only way out."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from app.core.domain import JSON, Routine
from app.core.errors import ConfigError
from app.core.ports import Emit, Place, Redacts, Sandbox, SecretLookup, Secrets, StoredSecret
from app.sandbox.bwrap import BwrapSandbox
from app.sandbox.egress.ca import RunCA, system_bundle
from app.sandbox.egress.policy import EgressPolicy, SystemResolver, live_secrets
from app.sandbox.egress.proxy import EgressProxy
from app.sandbox.image_root import ImageRoot
from app.sandbox.local import LocalSandbox

log = logging.getLogger(__name__)
DENIED_KEPT = 50  # as many as the pull request lists (the run's log keeps more: EgressLimits.events_in_full)


@dataclass
class RunBoundary:
    """What the runner needs for one run: the sandbox, the placeholder env, and what egress refused (at most
    DENIED_KEPT refusals, then one tally of the rest: `omitted` is their number)."""

    sandbox: Sandbox
    env: dict[str, str] = field(default_factory=dict)
    denied: list[JSON] = field(default_factory=list)
    _proxy: EgressProxy | None = None
    _dirs: tuple[Path, ...] = ()

    async def close(self) -> None:
        if self._proxy is not None:
            await self._proxy.close()
        # one thread call: it finishes even when this task is cancelled meanwhile
        await asyncio.to_thread(_remove, self._dirs)


def keep_denied(denied: list[JSON], data: JSON) -> None:
    """Add the refusal `data` to `denied`, or, past DENIED_KEPT and for the proxy's own summaries, add its
    count to the list's one tally entry."""
    summary = data.get("omitted")
    if summary is None and len(denied) < DENIED_KEPT:
        denied.append(data)
        return
    count = summary if isinstance(summary, int) else 1
    tally = next((d for d in denied if "omitted" in d), None)
    total = count + (tally["omitted"] if tally else 0)
    if tally is None:
        tally = {"host": "*", "port": 0}
        denied.append(tally)
    tally["omitted"] = total
    tally["reason"] = f"{total} more refusals were not recorded one by one (repeats, or past the first {DENIED_KEPT})"


def _remove(paths: tuple[Path, ...]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


class _RedactingLookup:
    """Vault reads for the proxy that also teach the run's redactor each value it hands out (rotation too)."""

    def __init__(self, vault: SecretLookup, redactor: Redacts) -> None:
        self.vault = vault
        self.redactor = redactor

    async def get(self, name: str) -> StoredSecret:
        secret = await self.vault.get(name)
        self.redactor.add(name, secret.value)
        return secret


class Boundaries:
    """Opens a RunBoundary per run: bwrap + egress proxy (default), or the unsandboxed local shell."""

    def __init__(
        self,
        *,
        kind: str,
        max_output_bytes: int,
        vault: Secrets | None,
        resolver: SystemResolver | None = None,
        upstream_ca_file: Path | None = None,
    ) -> None:
        self.kind = kind
        self.max_output_bytes = max_output_bytes
        self.vault = vault
        self.resolver = resolver or SystemResolver()
        self.upstream_ca_file = upstream_ca_file
        # built once and shared by every run's proxy: reading the trust store takes tens of milliseconds
        self.upstream_ca = ssl.create_default_context()
        if upstream_ca_file is not None:
            # an operator's internal CA: trusted by the proxy upstream, and inside for tunnelled hosts
            self.upstream_ca.load_verify_locations(cafile=str(upstream_ca_file))

    async def unpack(self, folder: Path) -> int | None:
        """Unpack the saved setup `folder/exchange/stash.tar` into `folder/work` and `folder/home` inside a
        sandbox of its own (no network, nothing of any run), so the worker never extracts what a setup
        made; the number of entries, or None where there is no sandbox to do it in (ROUTINES_SANDBOX=local)."""
        if self.kind == "local":
            return None
        sandbox = BwrapSandbox(
            max_output_bytes=self.max_output_bytes, home=folder / "home", exchange=folder / "exchange"
        )
        hands = await sandbox.hands(folder / "work", {})
        try:
            return await hands.unpack()
        finally:
            await hands.close()

    async def open(
        self, run_id: str, routine: Routine, run_dir: Path, emit: Emit, redactor: Redacts, place: Place | None = None
    ) -> RunBoundary:
        """The run's boundary; `place` puts the sandbox on an image's filesystem and keeps $HOME (environments)."""
        place = place or Place()
        if self.kind == "local":
            if routine.secrets:
                raise ConfigError(
                    f"routine {routine.name!r} uses secrets, which need the bwrap sandbox's egress proxy; "
                    "unset ROUTINES_SANDBOX=local"
                )
            if place.rootfs is not None:
                raise ConfigError(
                    f"routine {routine.name!r} runs in an image (environment), which needs the bwrap sandbox; "
                    "unset ROUTINES_SANDBOX=local"
                )
            return RunBoundary(LocalSandbox(max_output_bytes=self.max_output_bytes))
        placeholders = await self._placeholders(run_id, routine, redactor)
        directory = run_dir / "boundary"
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        denied: list[JSON] = []

        async def on_event(kind: str, data: JSON) -> None:
            if kind == "egress.denied":
                keep_denied(denied, data)
            await emit(kind, data)

        lookup: SecretLookup = _RedactingLookup(self.vault, redactor) if self.vault else _NoVault()
        policy = EgressPolicy(
            allow=routine.network_allow, defaults=routine.network_defaults, secrets=live_secrets(lookup, placeholders)
        )
        ca = await asyncio.to_thread(RunCA, directory / "ca")
        proxy = EgressProxy(policy, ca=ca, on_event=on_event, resolver=self.resolver, upstream_ca=self.upstream_ca)
        # AF_UNIX paths are capped at 108 bytes; run dirs can be deeper than that
        socket_dir = Path(tempfile.mkdtemp(prefix="routines-egress-"))
        socket = socket_dir / "sock"
        try:
            await proxy.start_unix(str(socket))
            bundle = await asyncio.to_thread(lambda: ca.bundle_path(self._trusted_roots(directory)))
        except BaseException:
            await proxy.close()
            for path in (directory, socket_dir):
                shutil.rmtree(path, ignore_errors=True)
            raise
        sandbox = BwrapSandbox(
            max_output_bytes=self.max_output_bytes,
            proxy_socket=socket,
            ca_bundle=bundle,
            root=ImageRoot(place.rootfs, place.env) if place.rootfs is not None else None,
            home=place.home,
            exchange=place.exchange,
        )
        return RunBoundary(sandbox, env=placeholders, denied=denied, _proxy=proxy, _dirs=(directory, socket_dir))

    def _trusted_roots(self, directory: Path) -> Path | None:
        system = system_bundle()
        if self.upstream_ca_file is None:
            return system
        roots = directory / "roots.pem"
        parts = [system.read_bytes()] if system else []
        roots.write_bytes(b"\n".join([*parts, self.upstream_ca_file.read_bytes()]))
        return roots

    async def _placeholders(self, run_id: str, routine: Routine, redactor: Redacts) -> dict[str, str]:
        if not routine.secrets:
            return {}
        if self.vault is None:
            raise ConfigError(
                f"routine {routine.name!r} uses secrets but ROUTINES_SECRET_KEY is not set; set it to the key "
                "the secrets were stored with"
            )
        for name in routine.secrets:
            redactor.add(name, (await self.vault.get(name)).value)
        return await self.vault.placeholders(run_id, routine.secrets)


class _NoVault:
    async def get(self, name: str) -> StoredSecret:
        raise ConfigError(f"secret {name} cannot be read: no vault is configured")
