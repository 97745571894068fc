"""OCI images as sandbox roots: pulled by the worker (never the sandbox) with skopeo, unpacked with umoci, one
read-only copy per image digest shared by every run that uses it.

`ImageStore.ensure(reference)` resolves the reference to a digest (one request to the registry), and
when that digest is not here yet pulls it into a temporary folder and renames the folder into place
once the layers are unpacked and checked: a half-pulled image is never used. Registry logins come from
the vault (`credentials`), written to an auth file only skopeo reads. Plain-http registries must be
listed in ROUTINES_INSECURE_REGISTRIES. The store is capped in bytes: `prune` removes the images used
least recently (never one a run holds) until it fits.

Layout under `root`: `<digest hex>/rootfs` (the filesystem), `<digest hex>/image.json` (reference,
digest, env, size, when pulled), `<digest hex>/used` (touched when a run takes it), `.pull-*` (pulls
in progress), `<digest hex>/runs/<run id>` (the runs holding it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.core.errors import SandboxError
from app.core.ports import PulledImage

log = logging.getLogger(__name__)

PULL_TIMEOUT_S = 900.0
MAX_CONFIG_BYTES = 4 * 1024 * 1024
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


class ImageError(SandboxError):
    """An image could not be made ready; the message says what to fix."""


@dataclass(frozen=True)
class ImageInfo:
    reference: str
    digest: str
    size_bytes: int
    pulled_at: float
    used_at: float
    runs: int


class ImageStore:
    def __init__(
        self,
        root: Path,
        *,
        insecure: Sequence[str] = (),
        cap_bytes: int = 20 * 1024**3,
        skopeo: str = "skopeo",
        umoci: str = "umoci",
    ) -> None:
        self.root = root
        self.insecure = tuple(insecure)
        self.cap_bytes = cap_bytes
        self._skopeo = skopeo
        self._umoci = umoci
        self._locks: dict[str, asyncio.Lock] = {}

    def folder(self, digest: str) -> Path:
        return self.root / digest.removeprefix("sha256:")

    async def ensure(self, reference: str, login: str | None = None, *, holder: str | None = None) -> PulledImage:
        """The image `reference` names, pulled when its digest is not here; `holder` (a run id) keeps it from
        being pruned until `release`. `login`: `user:password` or a token for the registry."""
        began = time.monotonic()
        for tool in (self._skopeo, self._umoci):
            if shutil.which(tool) is None:
                raise ImageError(f"{tool} is not installed; apt-get install skopeo umoci (the worker pulls with them)")
        with _auth_file(reference, login) as auth:
            digest = await self._digest(reference, auth)
            folder = self.folder(digest)
            pulled = False
            async with self._locks.setdefault(digest, asyncio.Lock()):
                if not (folder / "image.json").is_file():
                    await self._pull(reference, digest, auth)
                    pulled = True
                if holder is not None:  # held before any prune can see it
                    (folder / "runs").mkdir(exist_ok=True)
                    (folder / "runs" / holder).touch()
                (folder / "used").touch()
        if pulled:
            await asyncio.to_thread(self.prune)
        info = json.loads((folder / "image.json").read_text())
        env = tuple((k, v) for k, _, v in (item.partition("=") for item in info.get("env") or []) if k)
        return PulledImage(reference, digest, folder / "rootfs", env, pulled, time.monotonic() - began)

    def release(self, digest: str, holder: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder(digest) / "runs" / holder).unlink()

    async def _digest(self, reference: str, auth: Path | None) -> str:
        """The digest the registry serves for `reference`. Asked also for a pinned digest, with this
        reference's own registry and login: an image another routine pulled with its credentials is
        used only by a routine that may read it from its registry too."""
        pinned = reference.rpartition("@")[2]
        out = await self._run(
            [self._skopeo, "inspect", "--format", "{{.Digest}}", *self._src_flags(reference, auth), _docker(reference)],
            reference,
            timeout_s=120,
        )
        digest = out.strip()
        if not _DIGEST.match(digest):
            raise ImageError(f"the registry answered no digest for {reference} ({digest[:100]!r})")
        if _DIGEST.match(pinned) and digest != pinned:
            raise ImageError(f"the registry serves {digest} for {reference}, not the pinned digest; check it")
        return digest

    async def _pull(self, reference: str, digest: str, auth: Path | None) -> None:
        staging = await asyncio.to_thread(self._staging)
        try:
            layout = staging / "layout"
            source = f"docker://{_name(reference)}@{digest}"  # exactly what was resolved, even if the tag moved
            flags = self._src_flags(reference, auth, "src-")
            copy = [self._skopeo, "copy", "--quiet", *flags, source, f"oci:{layout}:image"]
            await self._run(copy, reference, timeout_s=PULL_TIMEOUT_S)
            # --rootless also as root: no device nodes, no files owned by the image's users on the worker
            unpack = [self._umoci, "raw", "unpack", "--rootless", "--image", f"{layout}:image", str(staging / "rootfs")]
            await self._run(unpack, reference, timeout_s=PULL_TIMEOUT_S)
            size = await asyncio.to_thread(_install, staging, reference, digest, self.folder(digest))
            log.info("image %s (%s) pulled: %.0f MB", reference, digest[:19], size / 1e6)
        finally:
            await asyncio.to_thread(_remove, staging)

    def _staging(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".pull-", dir=self.root))

    def _src_flags(self, reference: str, auth: Path | None, prefix: str = "") -> list[str]:
        """skopeo's flags for the registry `reference` is in (`prefix` "src-" for copy's source side)."""
        flags = [f"--{prefix}authfile={auth}"] if auth is not None else [f"--{prefix}no-creds"]
        if registry_host(reference) in self.insecure:
            flags.append(f"--{prefix}tls-verify=false")
        return flags

    async def _run(self, argv: list[str], reference: str, *, timeout_s: float) -> str:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), "TMPDIR": str(self.root)}
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True
        )
        try:
            async with asyncio.timeout(timeout_s):
                out, err = await proc.communicate()
        except TimeoutError:
            await _kill(proc)
            slow = f"{argv[0]} took over {timeout_s:g} s for {reference}; is the registry reachable?"
            raise ImageError(slow) from None
        except BaseException:
            await _kill(proc)
            raise
        if proc.returncode != 0:
            raise ImageError(explain(reference, err.decode(errors="replace")))
        return out.decode(errors="replace")

    def images(self) -> list[ImageInfo]:
        found = []
        for folder in sorted(self.root.glob("*/image.json")):
            record = json.loads(folder.read_text())
            base = folder.parent
            used = (base / "used").stat().st_mtime if (base / "used").exists() else record["pulled_at"]
            runs = len(list((base / "runs").iterdir())) if (base / "runs").is_dir() else 0
            size = int(record["size_bytes"])
            found.append(ImageInfo(record["reference"], record["digest"], size, record["pulled_at"], used, runs))
        return found

    def prune(self, *, cap_bytes: int | None = None, stale_holder_s: float = 86400.0) -> list[ImageInfo]:
        """Remove the least recently used images not held by a run until the store fits `cap_bytes`."""
        cap = self.cap_bytes if cap_bytes is None else cap_bytes
        images = sorted(self.images(), key=lambda i: i.used_at)
        total = sum(i.size_bytes for i in images)
        removed = []
        for image in images:
            if total <= cap:
                break
            holders = self.folder(image.digest) / "runs"
            if holders.is_dir():
                for held in holders.iterdir():  # runs that died without releasing
                    if time.time() - held.stat().st_mtime > stale_holder_s:
                        held.unlink(missing_ok=True)
                if any(holders.iterdir()):
                    continue
            _remove(self.folder(image.digest))
            total -= image.size_bytes
            removed.append(image)
        return removed


def explain(reference: str, stderr: str) -> str:
    """What skopeo or umoci said, as what is wrong and how to fix it."""
    text = " ".join(stderr.split())
    low = text.lower()

    def said(limit: int) -> str:  # the end of what the tool said, cut at a word
        return text if len(text) <= limit else "…" + text[-limit:].partition(" ")[2]

    if "manifest unknown" in low or "name unknown" in low or ("not found" in low and "manifest" in low):
        return f"image {reference} does not exist in its registry ({said(200)}); check the name and the tag"
    if "unauthorized" in low or "authentication required" in low or "denied" in low:
        return (
            f"the registry refused access to {reference} ({said(200)}); give the routine environment.credentials "
            "naming a vault secret with user:password or a token that may pull it"
        )
    if "connection refused" in low or "no such host" in low or "i/o timeout" in low or "dial tcp" in low:
        return f"the registry of {reference} cannot be reached ({said(200)}); check the host, the network, or retry"
    if "http response to https client" in low:
        host = registry_host(reference)
        return f"the registry of {reference} speaks plain http; list {host} in ROUTINES_INSECURE_REGISTRIES"
    if ("digest" in low and ("mismatch" in low or "did not match" in low)) or "unexpected eof" in low or "gzip" in low:
        return f"a layer of {reference} is corrupt or incomplete ({said(200)}); nothing of it was used — retry"
    return f"could not pull {reference}: {said(400)}"


def registry_host(reference: str) -> str:
    """The registry `reference` is pulled from, as host[:port] (docker.io when it names none)."""
    first = reference.split("/", 1)[0]
    if "/" in reference and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _name(reference: str) -> str:
    """The reference without its tag or digest, with its registry host."""
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name.rsplit(":", 1)[0]
    return name if registry_host(reference) != "docker.io" or name.startswith("docker.io/") else f"docker.io/{name}"


def _docker(reference: str) -> str:
    return f"docker://{reference}"


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


@contextlib.contextmanager
def _auth_file(reference: str, login: str | None) -> Iterator[Path | None]:
    """A containers-auth.json for the reference's registry (None without a login), removed afterwards."""
    if login is None:
        yield None
        return
    user, sep, password = login.partition(":")
    token = f"{user}:{password}" if sep else f"token:{login}"
    data = {"auths": {registry_host(reference): {"auth": base64.b64encode(token.encode()).decode()}}}
    fd, name = tempfile.mkstemp(prefix="routines-auth-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _config_env(layout: Path) -> list[str]:
    """The image config's Env, read from the OCI layout skopeo wrote (bounded JSON, digests followed)."""

    def blob(digest: str) -> object:
        if not _DIGEST.match(digest):
            raise ImageError(f"the image names a blob {digest[:80]!r} that is not a sha256 digest")
        path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ImageError("the image's manifest or config is too large to be real")
        return json.loads(path.read_bytes())

    index = json.loads((layout / "index.json").read_text())
    manifest = blob(index["manifests"][0]["digest"])
    if not isinstance(manifest, dict):
        raise ImageError("the image's manifest is not a JSON object")
    config = blob(manifest["config"]["digest"])
    env = (config.get("config") or {}).get("Env") if isinstance(config, dict) else None
    return [item for item in env or [] if isinstance(item, str)]


def _install(staging: Path, reference: str, digest: str, final: Path) -> int:
    """Record the unpacked image in `staging` and move it to `final` (unless another pull got there first)."""
    env = _config_env(staging / "layout")
    size = _du(staging / "rootfs")
    record = {"reference": reference, "digest": digest, "env": env, "size_bytes": size, "pulled_at": time.time()}
    (staging / "image.json").write_text(json.dumps(record))
    shutil.rmtree(staging / "layout", ignore_errors=True)
    if not final.exists():
        staging.rename(final)
    return size


def _du(path: Path) -> int:
    total = 0
    for current, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(current, name)).st_size
    return total


def _remove(path: Path) -> None:
    """rmtree that also removes what an image made read-only (never following a link); nothing if absent."""
    if not path.exists():
        return

    def unlock(_func: object, failed: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                shutil.rmtree(failed, ignore_errors=True)
            else:
                os.unlink(failed)

    shutil.rmtree(path, onerror=unlock)
