"""The bubblewrap sandbox: the run's persistent bash, and everything it starts, inside bwrap.

What the sandbox sees:
- a read-only system: `/usr`, `/etc`, `/opt` and the `/bin`, `/sbin`, `/lib*` links, never `/` as a
  whole (the worker's data dir, the App key, `/root`, `/home` and `/srv` are simply absent). In
  `/etc` everything the host keeps from other users (not world-readable: shadow, ssh host keys,
  `ssl/private`) is masked, because the sandbox user is mapped onto the worker's own uid and would
  otherwise read it as its owner. Paths given in `hide` are masked too.
- the workspace read-write at its own path (only it: its private git dir sits beside it), its
  `.git` pinned as a mount point (cannot be renamed or replaced), `.git/hooks` and `.git/config`
  read-only, and the mirror objects named in `.git/objects/info/alternates` read-only;
- private tmpfs `/tmp` and `$HOME`, a fresh `/proc` and `/dev`; new user, pid, ipc, uts, net and
  cgroup namespaces, uid 1000 inside, no capabilities, so `mount` and writes to `/usr` fail even
  when the worker runs as root;
- an environment of PATH, HOME, LANG, TERM and what the caller passes, nothing else. The bwrap
  process itself gets a minimal environment too: the sandbox's pid 1 keeps it in `/proc/1/environ`.

Limits: wall clock per command (PersistentShell kills the sandbox and restarts it), CPU seconds and
file size per process (rlimits), memory and process count per sandbox through a cgroup when one is
writable (`cgroups.py`), else memory through RLIMIT_AS per process and processes through
RLIMIT_NPROC, which the kernel ignores for root: a root worker without a writable cgroup has only
the pid namespace and the wall clock against a fork bomb, and says so in its log.

Network: none (`--unshare-net` leaves only loopback). With `proxy_socket`, a forwarder inside
(`egress/forwarder.py` on the sandbox's python3, else socat) listens on 127.0.0.1:3128 and relays to the
egress proxy's unix socket; the proxy variables point at it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.core.errors import SandboxError
from app.sandbox.cgroups import SandboxCgroup
from app.sandbox.egress import forwarder
from app.sandbox.hands import HandsProcess, SandboxHands
from app.sandbox.image_root import (
    ImageRoot,
    host_python,
    host_tools,
    image_runtime,
    mount_points,
    root_mounts,
    trust_mounts,
)
from app.sandbox.mounts import etc_masks, hide_mounts, runtime_mounts, system_mounts, workspace_mounts
from app.sandbox.runtime import alternates, hands_argv, sandbox_runtime
from app.sandbox.shell import DEFAULT_PATH, PersistentShell

log = logging.getLogger(__name__)

DEFAULT_RO_PATHS = ("/usr", "/etc", "/opt", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
HOME_INSIDE = "/home/sandbox"
STAGE_INSIDE = "/run/routines/stage"
EXCHANGE_INSIDE = "/run/routines/exchange"
SOCKET_INSIDE = "/run/routines/egress.sock"
CA_INSIDE = "/run/routines/ca.pem"
PROXY_URL = "http://127.0.0.1:3128"
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS")
SANDBOX_UID = 1000
NOT_INSTALLED = (
    "bubblewrap is not installed; apt-get install bubblewrap, "
    "or set ROUTINES_SANDBOX=local to run commands unsandboxed (not recommended)"
)
_ATTACH = 'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@"'
FORWARDER_INSIDE = "/run/routines/forwarder.py"
_LISTENS = "'0100007F:0C38 00000000:0000 0A'"  # 127.0.0.1:3128 listening, as /proc/net/tcp shows it
_FORWARDER = (
    # forwarder.py splices in the kernel and says when it listens; socat (with big blocks: its 8 KiB default
    # halves throughput) copies every byte through itself, and is the fallback where python3 is missing or has
    # no os.splice: only then is /proc/net/tcp polled (each read walks the host's whole TCP table)
    f"read -rt 5 _ < <(python3 -I -S -B {FORWARDER_INSIDE} 3128 {SOCKET_INSIDE} </dev/null 2>/dev/null || "
    f"{{ socat -b 1048576 TCP-LISTEN:3128,bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{SOCKET_INSIDE} "
    "</dev/null >/dev/null 2>&1 &\n"
    f"i=0; while [ $i -lt 500 ] && ! grep -qs {_LISTENS} /proc/net/tcp; do sleep 0.01; i=$((i+1)); done; echo; }})\n"
)


@dataclass(frozen=True)
class Limits:
    """Ceilings for one sandbox. `cpu_s` and `file_size_bytes` hold per process; `memory_bytes` and
    `max_processes` hold for the whole sandbox under a cgroup, per process (memory) otherwise."""

    cpu_s: int = 600
    memory_bytes: int = 4 * 1024**3
    max_processes: int = 512
    file_size_bytes: int = 2 * 1024**3
    tmp_bytes: int = 1024**3


def sandbox_available(bwrap: str = "bwrap") -> str | None:
    """None when bubblewrap can build this module's sandbox here, else why not (for services.py to report)."""
    exe = shutil.which(bwrap)
    if exe is None:
        return NOT_INSTALLED
    probe = [exe, *_isolation(), *system_mounts(DEFAULT_RO_PATHS), "--proc", "/proc", "--dev", "/dev", "true"]
    try:
        # a session of its own, as every sandbox has: a Ctrl+C meant for `routines dev` must not fail the probe
        done = subprocess.run(
            probe, env={"PATH": DEFAULT_PATH}, capture_output=True, text=True, timeout=30, start_new_session=True
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not be started ({exc}); check the bwrap binary at {exe}"
    if done.returncode != 0:
        return (
            f"bubblewrap cannot create a sandbox here: {done.stderr.strip() or f'exit code {done.returncode}'}; "
            "allow user namespaces (kernel.unprivileged_userns_clone=1, or run the container with a seccomp/"
            "AppArmor profile that permits them), or set ROUTINES_SANDBOX=local (not recommended)"
        )
    return None


class BwrapSandbox:
    """Starts persistent shells inside bubblewrap; see the module docstring for what they can reach."""

    name = "bwrap"

    def __init__(
        self,
        *,
        max_output_bytes: int = 30_000,
        limits: Limits | None = None,
        proxy_socket: Path | None = None,
        ca_bundle: Path | None = None,
        hide: Sequence[Path] = (),
        ro_paths: Sequence[str] = DEFAULT_RO_PATHS,
        path: str = DEFAULT_PATH,
        bwrap: str = "bwrap",
        root: ImageRoot | None = None,
        home: Path | None = None,
        exchange: Path | None = None,
    ) -> None:
        self.max_output_bytes = max_output_bytes
        self.limits = limits or Limits()
        self.proxy_socket = proxy_socket
        self.ca_bundle = ca_bundle
        self.hide = tuple(hide)
        self.ro_paths = tuple(ro_paths)
        self.path = root.path if root is not None else path
        self._bwrap = bwrap
        self._etc_masks: list[str] | None = None
        self.root = root  # an image's filesystem as `/` (image_root.py); None: the host's system, read-only
        self.home = home  # a folder kept across shell restarts as $HOME; None: a fresh tmpfs each time
        self.exchange = exchange  # a folder only the hands process sees (the setup's saved result)

    async def shell(self, workdir: Path, env: dict[str, str]) -> PersistentShell:
        """A started shell in `workdir` (which the sandbox sees at the same path); raises SandboxError
        when bubblewrap is missing or cannot start."""
        workdir = await asyncio.to_thread(workdir.resolve)
        cgroup = await asyncio.to_thread(
            SandboxCgroup.create,
            f"routines-{secrets.token_hex(6)}",
            memory_bytes=self.limits.memory_bytes,
            max_processes=self.limits.max_processes,
        )
        try:
            argv = await asyncio.to_thread(self.argv, workdir, env, held=cgroup.holds)
        except BaseException:
            await asyncio.to_thread(cgroup.remove)
            raise
        _log_limits(workdir, cgroup)
        shell = PersistentShell(
            _BwrapLauncher(argv, cgroup),
            workdir=workdir,
            max_output_bytes=self.max_output_bytes,
            max_processes=self.limits.max_processes,
        )
        try:
            probe = await shell.run(":", 30)
        except BaseException:  # cancelled while starting: the shell and its cgroup must not outlive us
            await shell.close()
            raise
        if probe.exit_code != 0:
            await shell.close()
            raise SandboxError(
                f"the bubblewrap sandbox for {workdir} did not start: {probe.output.strip()[:500]}; "
                "run `routines doctor` or check sandbox_available()"
            )
        return shell

    async def hands(self, workdir: Path, env: dict[str, str]) -> SandboxHands:
        """The shell of `shell()`, and a hands process (editor, staging) in a bubblewrap of its own that
        sees `workdir` exactly as the shell does, with neither network nor the run's environment."""
        shell = await self.shell(workdir, env)
        try:
            argv, stage = await asyncio.to_thread(self.hands_argv, shell.workdir)
        except BaseException:
            await shell.close()
            raise
        return SandboxHands(shell, HandsProcess(argv), shell.workdir, cleanup=(stage,))

    def hands_argv(self, workdir: Path) -> tuple[list[str], Path]:
        """The bwrap command line of the hands process for `workdir`, and its private staging folder."""
        exe = shutil.which(self._bwrap)
        if exe is None:
            raise SandboxError(NOT_INSTALLED)
        if self._etc_masks is None:
            self._etc_masks = etc_masks()
        stage = workdir.with_name(workdir.name + ".stage")
        stage.mkdir(mode=0o700, exist_ok=True)
        runtime = sandbox_runtime()
        if self.root is not None:
            runtime, runtime_binds = image_runtime(runtime, host_tools())
        else:
            runtime_binds = runtime_mounts(runtime, self.ro_paths)
        early = [
            *["--proc", "/proc", "--dev", "/dev"],
            *["--size", str(64 * 1024 * 1024), "--tmpfs", "/tmp"],
            *self._home(64 * 1024 * 1024),
        ]
        late = [
            *workspace_mounts(workdir),
            *runtime_binds,
            *["--bind", str(stage), STAGE_INSIDE],
            *(["--bind", str(self.exchange), EXCHANGE_INSIDE] if self.exchange is not None else []),
        ]
        mounts = [*self._layout(early, late), *["--remount-ro", "/", "--chdir", str(workdir)]]
        rlimits = {"as": self.limits.memory_bytes, "fsize": self.limits.file_size_bytes, "core": 0}
        config = {
            "workspace": str(workdir),
            "root": str(workdir),
            "gitdir": STAGE_INSIDE,
            "alternates": alternates(workdir),
            "rlimits": rlimits,
            "home": HOME_INSIDE if self.home is not None else None,
            "exchange": EXCHANGE_INSIDE if self.exchange is not None else None,
        }
        env = {"PATH": self.path, "HOME": HOME_INSIDE, "LANG": "C.UTF-8"}
        if self.root is not None:
            # libgit2 loads OpenSSL's default trust store when it starts and fails where the folder is missing,
            # as in most images. The hands never reach the network: any existing folder, without certificates, does.
            env["SSL_CERT_DIR"] = "/dev"
        env_args = [arg for name, value in env.items() for arg in ("--setenv", name, value)]
        return [exe, *_isolation(), "--clearenv", *env_args, *mounts, *hands_argv(runtime, config)], stage

    def argv(
        self, workdir: Path, env: dict[str, str], *, held: dict[str, str] | None = None, command: Sequence[str] = ()
    ) -> list[str]:
        """The bwrap command line for `workdir`: runs `command`, or by default the shell's bash.

        Prepares the workspace's `.git` on the host (creates `hooks/` and `config` so they can be
        mounted read-only). `held` names the limits a cgroup already enforces.
        """
        exe = shutil.which(self._bwrap)
        if exe is None:
            raise SandboxError(NOT_INSTALLED)
        socat_path = DEFAULT_PATH if self.root is not None else self.path
        if self.proxy_socket is not None and shutil.which("socat", path=socat_path) is None:
            raise SandboxError("socat is not installed; apt-get install socat (the sandbox's way to the egress proxy)")
        trust = []
        if self.root is not None and self.ca_bundle is not None:
            trust = trust_mounts(self.root.rootfs, self.ca_bundle)
        early = [
            *["--proc", "/proc", "--dev", "/dev"],
            *["--size", str(self.limits.tmp_bytes), "--tmpfs", "/tmp"],
            *self._home(self.limits.tmp_bytes),
        ]
        late = [*workspace_mounts(workdir), *self._egress_mounts(), *trust, *self._forwarder_mounts()]
        mounts = [*self._layout(early, late), *["--remount-ro", "/", "--chdir", str(workdir)]]
        tail = list(command) or [*self._bash(), "--noprofile", "--norc", "-c", self._init_script(held or {})]
        return [exe, *_isolation(), "--clearenv", *self._env_args(env), *mounts, *tail]

    def _layout(self, early: list[str], late: list[str]) -> list[str]:
        """All mounts: the sandbox's system with its own mounts. The host's system folders (read-only, with
        what other users may not read masked) go between `early` (/proc, /dev, /tmp, $HOME) and `late` (the
        workspace and the rest), so a masked or listed path under /tmp stays as the host has it. An image's
        filesystem goes first, as `/`, with room made for every mount that follows."""
        if self.root is not None:
            root = root_mounts(self.root, host_tools(), keep=mount_points([*early, *late]))
            return [*root, *early, *late, *self._image_hides(late)]
        if self._etc_masks is None:
            self._etc_masks = etc_masks()
        system = [*system_mounts(self.ro_paths), *self._etc_masks, *hide_mounts(self.hide, self.ro_paths)]
        return [*early, *system, *late]

    def _image_hides(self, late: Sequence[str]) -> list[str]:
        """Masks for hidden paths under what an image root shows of the host: the worker's tools (at
        /run/routines/host) and folders bound at their own path (the hands' Python)."""
        tools = host_tools()
        args: list[str] = []
        for path in (p.resolve() for p in self.hide):
            inside = tools.inside(str(path))
            if inside != str(path) and path.exists():
                args += ["--tmpfs", inside] if path.is_dir() else ["--ro-bind", "/dev/null", inside]
        own = [late[i + 1] for i, a in enumerate(late[:-2]) if a == "--ro-bind" and late[i + 1] == late[i + 2]]
        return [*args, *hide_mounts(self.hide, own)]

    def _home(self, size: int) -> list[str]:
        if self.home is not None:
            return ["--bind", str(self.home), HOME_INSIDE]
        return ["--size", str(size), "--tmpfs", HOME_INSIDE]

    def _bash(self) -> list[str]:
        """The agent's shell: the host's bash (through the host's loader inside an image root)."""
        return host_tools().program("bash") if self.root is not None else ["bash"]

    def _env_args(self, env: dict[str, str]) -> list[str]:
        image = dict(self.root.env) if self.root is not None else {}
        values = {**image, "PATH": self.path, "HOME": HOME_INSIDE, "LANG": "C.UTF-8", "TERM": "dumb", **env}
        if self.proxy_socket is not None:
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                values[name] = PROXY_URL
            values["NO_PROXY"] = values["no_proxy"] = "localhost,127.0.0.1"
        if self.ca_bundle is not None:
            values.update(dict.fromkeys(CA_VARIABLES, CA_INSIDE))
        return [arg for name, value in values.items() for arg in ("--setenv", name, value)]

    def _egress_mounts(self) -> list[str]:
        args: list[str] = []
        if self.proxy_socket is not None:
            if not self.proxy_socket.is_socket():
                raise SandboxError(f"the egress proxy socket {self.proxy_socket} does not exist; start the proxy first")
            args += ["--ro-bind", str(self.proxy_socket), SOCKET_INSIDE]
            args += ["--ro-bind", os.path.realpath(forwarder.__file__), FORWARDER_INSIDE]
        if self.ca_bundle is not None:
            if not self.ca_bundle.is_file():
                raise SandboxError(f"the CA bundle {self.ca_bundle} does not exist; write the run's CA bundle first")
            args += ["--ro-bind", str(self.ca_bundle), CA_INSIDE]
        return args

    def _init_script(self, held: dict[str, str]) -> str:
        """Start the forwarder (if any), set the rlimits, then become the persistent bash."""
        lim = self.limits
        ulimits = [
            ("-t", resource.RLIMIT_CPU, lim.cpu_s, 1),
            ("-f", resource.RLIMIT_FSIZE, lim.file_size_bytes, 1024),
            ("-u", resource.RLIMIT_NPROC, lim.max_processes, 1),
        ]
        if "memory" not in held:
            ulimits.append(("-v", resource.RLIMIT_AS, lim.memory_bytes, 1024))
        settings = " ".join(f"{flag} {_capped(kind, value) // unit}" for flag, kind, value, unit in ulimits)
        forwarder = self._forwarder() if self.proxy_socket is not None else ""
        bash = shlex.join(self._bash())
        # the usual soft limit of open files, whatever the worker raised its own to; the agent may raise it
        open_files = f"ulimit -S -n {_capped(resource.RLIMIT_NOFILE, SOFT_OPEN_FILES)}\n"
        return f"{forwarder}ulimit -S -H {settings}\n{open_files}exec {bash} --noprofile --norc\n"

    def _forwarder_mounts(self) -> list[str]:
        """Inside an image root, what the worker's Python needs to run the forwarder (its prefix)."""
        if self.root is None or self.proxy_socket is None:
            return []
        return host_python(sandbox_runtime(), host_tools())[1]

    def _forwarder(self) -> str:
        """The forwarder's start; inside an image root, Python and socat are the worker's (through its
        loader) and the wait uses bash alone."""
        if self.root is None:
            return _FORWARDER
        tools = host_tools()
        python = shlex.join(host_python(sandbox_runtime(), tools)[0])
        socat = shlex.join(tools.program("socat"))
        return (
            f"read -rt 5 _ < <({python} -I -S -B {FORWARDER_INSIDE} 3128 {SOCKET_INSIDE} </dev/null 2>/dev/null || "
            f"{{ {socat} -b 1048576 TCP-LISTEN:3128,bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{SOCKET_INSIDE} "
            "</dev/null >/dev/null 2>&1 &\n"
            "for _ in {1..500}; do"
            f" [[ $(< /proc/net/tcp) == *{_LISTENS}* ]] && break;"
            " read -rt 0.01 <> <(:) || :; done; echo; })\n"
        )


class _BwrapLauncher:
    """Spawns bwrap (inside the sandbox's cgroups when there are some) and cleans up after it."""

    def __init__(self, argv: list[str], cgroup: SandboxCgroup) -> None:
        self._argv = argv
        self._cgroup = cgroup

    async def spawn(self) -> asyncio.subprocess.Process:
        procs = [str(p) for p in self._cgroup.procs_files]
        prefix = ["/bin/sh", "-c", _ATTACH, "sh", *procs, "--"] if procs else []
        try:
            return await asyncio.create_subprocess_exec(
                *prefix,
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd="/",
                env={"PATH": DEFAULT_PATH},
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxError(f"cannot start bubblewrap ({exc.strerror}); {NOT_INSTALLED}") from None

    async def reap(self) -> None:
        self._cgroup.kill()

    def crowded(self) -> bool:
        return self._cgroup.crowded()

    async def close(self) -> None:
        await asyncio.to_thread(self._cgroup.remove)


def _isolation() -> list[str]:
    uid = str(SANDBOX_UID)
    return [
        *["--unshare-all", "--unshare-user", "--uid", uid, "--gid", uid],
        *["--cap-drop", "ALL", "--die-with-parent", "--new-session"],
    ]


SOFT_OPEN_FILES = 1024  # what most systems give a process, and what tools that close every descriptor expect


def _capped(kind: int, value: int) -> int:
    """`value`, lowered to the worker's own hard limit (a sandbox cannot raise it)."""
    hard = resource.getrlimit(kind)[1]
    return value if hard == resource.RLIM_INFINITY else min(value, hard)


def _log_limits(workdir: Path, cgroup: SandboxCgroup) -> None:
    memory = cgroup.holds.get("memory", "RLIMIT_AS per process")
    if "pids" in cgroup.holds:
        processes = f"{cgroup.holds['pids']} pids.max"
    elif os.geteuid() == 0:
        processes = "nothing but the pid namespace and the wall clock"
        log.warning(
            "the sandbox for %s cannot limit its process count: no writable cgroup, and RLIMIT_NPROC does not "
            "apply to root; run the worker as a non-root user or give it a delegated cgroup v2 subtree",
            workdir,
        )
    else:
        processes = "RLIMIT_NPROC (shared by the worker user's processes)"
    log.info("bwrap sandbox for %s: memory limited by %s, processes by %s", workdir, memory, processes)
