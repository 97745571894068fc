"""A real OCI registry on 127.0.0.1 for tests and benches, and test images built from local files.

The registry is Debian's `docker-registry` (CNCF distribution) with its storage in a temporary folder,
optionally behind htpasswd logins. Images are built without a daemon: `umoci` makes an OCI layout whose
root filesystem holds busybox-static (a shell and the usual commands) plus whatever files a test adds,
and `skopeo` pushes it. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.testing.serve import free_port

TOOLS = {"docker-registry": "docker-registry", "umoci": "umoci", "skopeo": "skopeo"}
BUSYBOX = "/bin/busybox"
APPLETS = (
    "sh",
    "ash",
    "ls",
    "cat",
    "echo",
    "env",
    "id",
    "mkdir",
    "rm",
    "rmdir",
    "sleep",
    "test",
    "[",
    "wc",
    "head",
    "tail",
    "tr",
    "sed",
    "grep",
    "uname",
    "true",
    "false",
    "touch",
    "cp",
    "mv",
    "ln",
    "chmod",
    "pwd",
    "printf",
    "find",
    "xargs",
    "sort",
    "uniq",
    "cut",
    "date",
    "basename",
    "dirname",
    "readlink",
    "stat",
    "wget",
    "tee",
    "which",
    "expr",
    "seq",
    "du",
    "df",
)


def registry_missing() -> str | None:
    """What this machine lacks to run the registry tests (the apt command), or None."""
    missing = [package for package, tool in TOOLS.items() if shutil.which(tool) is None]
    if not _static(BUSYBOX):
        missing.append("busybox-static")
    return f"apt-get install {' '.join(missing)}" if missing else None


def _static(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return head.startswith(b"\x7fELF") and b"ld-linux" not in head


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT — list it in ROUTINES_INSECURE_REGISTRIES (plain HTTP)
    storage: Path
    login: tuple[str, str] | None = None

    def push(self, layout: Path, tag: str, name: str) -> str:
        """Push the OCI layout's `tag` as `name:tag`; returns the reference."""
        reference = f"{self.host}/{name}:{tag}"
        creds = ["--dest-creds", ":".join(self.login)] if self.login else ["--dest-no-creds"]
        _run(
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            *creds,
            f"oci:{layout}:{tag}",
            f"docker://{reference}",
        )
        return reference

    def blobs(self) -> list[Path]:
        """The blob files the registry stores (layers, configs, manifests), largest first."""
        found = list((self.storage / "docker" / "registry" / "v2" / "blobs").glob("sha256/*/*/data"))
        return sorted(found, key=lambda p: p.stat().st_size, reverse=True)


@contextmanager
def running_registry(root: Path, *, login: tuple[str, str] | None = None) -> Iterator[Registry]:
    """Serve a registry from `root` on a free loopback port until the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "test-registry-secret"},
    }
    if login is not None:
        import bcrypt

        hashed = bcrypt.hashpw(login[1].encode(), bcrypt.gensalt(rounds=4)).decode()
        (root / "htpasswd").write_text(f"{login[0]}:{hashed}\n")
        config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(root / "htpasswd")}}
    (root / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen(
        ["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT, cwd=root
    )
    try:
        _wait_up(f"http://127.0.0.1:{port}/v2/", process, root / "registry.log")
        yield Registry(f"127.0.0.1:{port}", root / "storage", login)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def build_image(
    work: Path,
    *,
    tag: str = "1",
    files: Mapping[str, str | bytes] | None = None,
    executables: Mapping[str, str | bytes] | None = None,
    env: Mapping[str, str] | None = None,
    host_programs: tuple[str, ...] = (),
) -> Path:
    """An OCI layout in `work/layout` holding busybox-static, `files` and `executables` (paths in the image),
    `env` in its config, and `host_programs` (e.g. /usr/bin/curl) copied with the libraries they load."""
    layout, bundle = work / "layout", work / "bundle"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rootless = ["--rootless"] if os.geteuid() != 0 else []
    _run("umoci", "init", "--layout", str(layout))
    _run("umoci", "new", "--image", f"{layout}:{tag}")
    _run("umoci", "unpack", *rootless, "--image", f"{layout}:{tag}", str(bundle))
    rootfs = bundle / "rootfs"
    for folder in ("bin", "etc/ssl/certs", "usr/local/bin", "tmp", "root", "home"):
        (rootfs / folder).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt").write_text("")  # the image's (empty) trust store
    (rootfs / "etc" / "image-release").write_text("routines test image\n")
    for program in host_programs:
        _copy_with_libraries(program, rootfs)
    for mode, entries in ((0o644, files), (0o755, executables)):
        for path, content in (entries or {}).items():
            target = rootfs / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
            target.chmod(mode)
    _run("umoci", "repack", "--image", f"{layout}:{tag}", str(bundle))
    path = "/usr/local/bin:/usr/bin:/bin"
    flags = [f"--config.env=PATH={path}"] + [f"--config.env={k}={v}" for k, v in (env or {}).items()]
    _run("umoci", "config", "--image", f"{layout}:{tag}", *flags)
    return layout


def _copy_with_libraries(program: str, rootfs: Path) -> None:
    """Copy a host program and every library `ldd` says it loads (with the loader) to the same paths."""
    listed = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    paths = [program]
    for line in listed.splitlines():
        words = line.split()
        if "=>" in words and len(words) > words.index("=>") + 1 and words[words.index("=>") + 1].startswith("/"):
            paths.append(words[words.index("=>") + 1])
        elif words and words[0].startswith("/"):
            paths.append(words[0])  # the loader
    for path in paths:
        target = rootfs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)


def _wait_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # 401: up, and asking for a login
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not answer at {url}: {log.read_text()[-2000:]}") from None
            time.sleep(0.05)


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout
