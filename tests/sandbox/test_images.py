"""The worker's image store against a real registry on 127.0.0.1: one pull per digest whatever the number of
runs, nothing half-pulled ever installed, pruning that spares held images, and errors that say what to fix."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.sandbox.images import ImageError, ImageStore, explain
from app.testing.registry import Registry, build_image, registry_missing, running_registry
from app.testing.serve import free_port

pytestmark = pytest.mark.skipif(registry_missing() is not None, reason=str(registry_missing()))


@dataclass
class Pushed:
    registry: Registry
    first: str
    second: str


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    root = tmp_path_factory.mktemp("registry")
    with running_registry(root / "registry") as registry:
        first = registry.push(build_image(root / "a", files={"/etc/which": "first\n"}), "1", "acme/first")
        second = registry.push(build_image(root / "b", files={"/etc/which": "second\n"}), "1", "acme/second")
        yield Pushed(registry, first, second)


def store(tmp_path: Path, pushed: Pushed, **kwargs: object) -> ImageStore:
    return ImageStore(tmp_path / "images", insecure=(pushed.registry.host,), **kwargs)  # type: ignore[arg-type]


def test_many_runs_share_one_pull_and_one_copy(tmp_path: Path, pushed: Pushed) -> None:
    images = store(tmp_path, pushed)

    async def five_runs() -> list[bool]:
        got = await asyncio.gather(*(images.ensure(pushed.first, holder=f"run-{i}") for i in range(5)))
        assert len({g.digest for g in got}) == 1 and (got[0].rootfs / "etc" / "which").read_text() == "first\n"
        return [g.pulled for g in got]

    assert sorted(asyncio.run(five_runs())) == [False, False, False, False, True]
    [info] = images.images()
    assert info.runs == 5 and info.reference == pushed.first
    folders = [p.name for p in (tmp_path / "images").iterdir()]
    assert folders == [info.digest.removeprefix("sha256:")], "one copy of the layers, nothing left half-pulled"


def test_a_pinned_digest_is_what_runs(tmp_path: Path, pushed: Pushed) -> None:
    images = store(tmp_path, pushed)
    digest = asyncio.run(images.ensure(pushed.first)).digest
    pinned = f"{pushed.first.rpartition(':')[0]}@{digest}"
    again = asyncio.run(images.ensure(pinned))
    assert again.digest == digest and not again.pulled


def test_prune_drops_the_least_recently_used_and_spares_what_a_run_holds(tmp_path: Path, pushed: Pushed) -> None:
    images = store(tmp_path, pushed)
    first = asyncio.run(images.ensure(pushed.first, holder="live-run"))
    second = asyncio.run(images.ensure(pushed.second))
    assert [i.digest for i in images.prune(cap_bytes=0)] == [second.digest]  # the first is held
    assert first.rootfs.is_dir() and not second.rootfs.exists()
    images.release(first.digest, "live-run")
    assert [i.digest for i in images.prune(cap_bytes=0)] == [first.digest]
    assert images.images() == []


@pytest.mark.parametrize(
    ("reference", "phrase"),
    [
        ("{host}/acme/nothing:1", "does not exist in its registry"),
        ("{host}/acme/first:no-such-tag", "does not exist in its registry"),
        ("127.0.0.1:{closed}/acme/first:1", "cannot be reached"),
    ],
)
def test_a_pull_that_cannot_happen_says_what_to_fix(
    tmp_path: Path, pushed: Pushed, reference: str, phrase: str
) -> None:
    closed = free_port()
    images = ImageStore(tmp_path / "images", insecure=(pushed.registry.host, f"127.0.0.1:{closed}"))
    with pytest.raises(ImageError, match=phrase):
        asyncio.run(images.ensure(reference.format(host=pushed.registry.host, closed=closed)))
    folder = tmp_path / "images"
    assert not folder.exists() or not list(folder.iterdir()), "nothing is installed, nothing is left half-pulled"


def test_a_plain_http_registry_must_be_listed_as_insecure(tmp_path: Path, pushed: Pushed) -> None:
    with pytest.raises(ImageError, match="ROUTINES_INSECURE_REGISTRIES"):
        asyncio.run(ImageStore(tmp_path / "images").ensure(pushed.first))


def test_missing_tools_are_named_with_the_package(tmp_path: Path, pushed: Pushed) -> None:
    images = ImageStore(tmp_path / "images", skopeo="/nonexistent/skopeo")
    with pytest.raises(ImageError, match="apt-get install skopeo umoci"):
        asyncio.run(images.ensure(pushed.first))


def test_explain_reads_what_the_tools_say() -> None:
    ref = "ghcr.io/acme/dev:1"
    assert "refused access" in explain(ref, "FATA[0000] Error: unauthorized: authentication required")
    assert "corrupt or incomplete" in explain(ref, "writing blob: Digest did not match, expected sha256:ab")
    assert "corrupt or incomplete" in explain(ref, "reading blob sha256:ab: unexpected EOF")
    assert explain(ref, "something else") == "could not pull ghcr.io/acme/dev:1: something else"
    long = explain(ref, "word " * 500 + "dial tcp: connection refused")
    assert "…" in long and "connection refused" in long and len(long) < 400


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node for the image needs root")
def test_an_images_device_nodes_and_owners_never_reach_the_worker(tmp_path: Path, pushed: Pushed) -> None:
    layout = build_image(tmp_path / "dev", files={"/etc/which": "devices\n"})
    rootfs = tmp_path / "dev" / "bundle" / "rootfs"
    os.mknod(rootfs / "etc" / "mem", 0o666 | stat.S_IFCHR, os.makedev(1, 1))  # /dev/mem's numbers
    os.chown(rootfs / "etc" / "which", 1234, 1234)
    subprocess.run(["umoci", "repack", "--image", f"{layout}:1", str(tmp_path / "dev" / "bundle")], check=True)
    reference = pushed.registry.push(layout, "1", "acme/devices")
    pulled = asyncio.run(store(tmp_path, pushed).ensure(reference))
    assert not (pulled.rootfs / "etc" / "mem").exists() or not stat.S_ISCHR(
        (pulled.rootfs / "etc" / "mem").lstat().st_mode
    )
    assert (pulled.rootfs / "etc" / "which").stat().st_uid == os.geteuid()


def test_a_pulled_digest_is_not_handed_to_a_reference_its_registry_does_not_serve(
    tmp_path: Path, pushed: Pushed
) -> None:
    images = store(tmp_path, pushed)
    digest = asyncio.run(images.ensure(pushed.first)).digest  # pulled once (as with a routine's login)
    elsewhere = f"{pushed.registry.host}/acme/other-name@{digest}"  # names the digest, not the image
    with pytest.raises(ImageError, match="does not exist in its registry"):
        asyncio.run(images.ensure(elsewhere))
