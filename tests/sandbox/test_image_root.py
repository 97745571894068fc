"""An image's filesystem as the sandbox's root: each top-level entry bound read-only, the folders on the way
to the sandbox's own mount points recreated around them, the worker's tools under /run/routines/host."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from app.core.errors import SandboxError
from app.sandbox.bwrap import BwrapSandbox, sandbox_available
from app.sandbox.image_root import HOST_INSIDE, ImageRoot, host_tools, mount_points, root_mounts, trust_mounts


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    for folder in ("usr/bin", "etc/ssl/certs", "var/lib/apt", "var/cache", "root", "proc", "tmp"):
        (root / folder).mkdir(parents=True)
    (root / "etc" / "ssl" / "certs" / "ca-certificates.crt").write_text("")
    (root / "etc" / "hostname").write_text("image\n")
    (root / "bin").symlink_to("usr/bin")
    return root


def pairs(args: list[str], flag: str) -> list[tuple[str, str]]:
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == flag]


def test_each_top_level_entry_is_bound_read_only_and_the_sandbox_keeps_its_own(rootfs: Path) -> None:
    args = root_mounts(ImageRoot(rootfs), host_tools())
    assert args[:2] == ["--tmpfs", "/"]
    binds = dict((inside, host) for host, inside in pairs(args, "--ro-bind"))
    assert binds["/usr"] == str(rootfs / "usr") and binds["/etc"] == str(rootfs / "etc")
    assert ("usr/bin", "/bin") in pairs(args, "--symlink")
    assert "/proc" not in binds and "/tmp" not in binds  # made by the sandbox, never the image's
    assert binds[f"{HOST_INSIDE}/usr"] == "/usr"  # the worker's own tools, out of the image's way
    assert "--bind" not in args, "nothing of the image is writable"


def test_folders_on_the_way_to_a_mount_point_are_recreated_around_it(rootfs: Path) -> None:
    keep = ["/var/lib/routines/runs/r1/repo", "/etc/ssl/certs/ca-certificates.crt", "/tmp/x"]
    args = root_mounts(ImageRoot(rootfs), host_tools(), keep=keep)
    binds = {inside for _, inside in pairs(args, "--ro-bind")}
    dirs = {args[i + 1] for i, a in enumerate(args) if a == "--dir"}
    assert {"/var", "/var/lib", "/etc", "/etc/ssl", "/etc/ssl/certs"} <= dirs
    assert {"/var/cache", "/var/lib/apt", "/etc/hostname", "/usr"} <= binds  # the rest still shows
    assert "/var" not in binds and "/etc" not in binds and "/etc/ssl/certs/ca-certificates.crt" not in binds


def test_mount_points_reads_bwrap_arguments() -> None:
    args = ["--proc", "/proc", "--size", "10", "--tmpfs", "/tmp", "--bind", "/h", "/home/sandbox"]
    args += ["--ro-bind", "/a", "/run/x", "--setenv", "A", "B", "--remount-ro", "/", "--chdir", "/w"]
    assert mount_points(args) == ["/proc", "/tmp", "/home/sandbox", "/run/x"]


def test_the_run_ca_is_bound_over_the_images_trust_store(rootfs: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("pem")
    assert trust_mounts(rootfs, bundle) == ["--ro-bind", str(bundle), "/etc/ssl/certs/ca-certificates.crt"]


def test_a_missing_image_root_says_to_pull_again(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="must be pulled again"):
        root_mounts(ImageRoot(tmp_path / "gone"), host_tools())


def real_socat() -> str:
    return os.path.realpath(shutil.which("socat") or "/usr/bin/socat")


@pytest.mark.skipif(sandbox_available() is not None, reason=str(sandbox_available()))
async def test_a_hidden_host_file_stays_hidden_beside_an_image(tmp_path: Path) -> None:
    rootfs = tmp_path / "image"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "cat", "wc", "ls"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    socat = real_socat()
    sandbox = BwrapSandbox(root=ImageRoot(rootfs, (("PATH", "/bin"),)), hide=[Path(socat)])
    shell = await sandbox.shell(workspace, {})
    try:
        inside = host_tools().inside(socat)
        result = await shell.run(f"wc -c < {inside}; ls /bin | wc -l; cat /etc/passwd 2>&1", 10)
    finally:
        await shell.close()
    size, listed, passwd = result.output.splitlines()[:3]
    assert size.strip() == "0" or "Permission denied" in size, result.output  # masked
    assert listed.strip() == "5", result.output  # the image's /bin only
    assert "No such file" in passwd  # the image has no /etc, and the host's is not there
