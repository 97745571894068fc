"""BwrapSandbox against real bubblewrap: an escape suite run as the agent's commands, then the egress hook-up.

Every escape test asserts two things: the attempt is contained (checked on the host where it can
be), and the same shell still answers afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import shutil
import socket
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.core.errors import SandboxError
from app.git.mirrors import Mirrors
from app.sandbox.bwrap import CA_INSIDE, DEFAULT_RO_PATHS, SOFT_OPEN_FILES, BwrapSandbox, Limits, sandbox_available
from app.sandbox.shell import DEFAULT_PATH, PersistentShell
from tests.support.git import git

SECRET = "s3cr3t-worker-value-1234"
KEY = "-----BEGIN RSA PRIVATE KEY-----\nfake-app-key-5678\n-----END RSA PRIVATE KEY-----\n"
PYTHON3 = Path(shutil.which("python3", path=DEFAULT_PATH) or "/usr/bin/python3")  # the sandbox's, masked to test socat
LIMITS = Limits(cpu_s=30, memory_bytes=256 * 1024**2, max_processes=64, file_size_bytes=10 * 1024**2)


@pytest.fixture
async def workspace(tmp_path: Path) -> Path:
    """A real run layout: a mirror and a checkout borrowing its objects, under a data dir in tmp_path."""
    origin = tmp_path / "origin"
    git("init", "-q", "-b", "main", str(origin), cwd=tmp_path)
    (origin / "README.md").write_text("# demo\n")
    git("add", "-A", cwd=origin)
    git("commit", "-q", "-m", "first commit", cwd=origin)
    mirrors = Mirrors(tmp_path / "data", spares=False)
    ws = await mirrors.checkout(await mirrors.ensure(str(origin)), "main", tmp_path / "data" / "runs" / "r1" / "repo")
    return ws.path


@pytest.fixture
async def shell(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PersistentShell]:
    reason = sandbox_available()
    if reason is not None:
        pytest.fail(reason)
    monkeypatch.setenv("ROUTINES_TEST_SECRET", SECRET)
    sh = await BwrapSandbox(max_output_bytes=2_000, limits=LIMITS).shell(workspace, {"GREETING": "hello"})
    yield sh
    await sh.close()


async def still_works(sh: PersistentShell, workspace: Path) -> None:
    result = await sh.run("pwd; echo $GREETING", 10)
    assert (result.output, result.exit_code) == (f"{workspace}\nhello\n", 0)


def on_host(path: str) -> bool:
    return os.path.exists(path)


def host_processes_with(argument: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and argument.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def test_the_workers_environment_is_out_of_reach(shell: PersistentShell, workspace: Path) -> None:
    result = await shell.run("env; cat /proc/1/environ; cat /proc/$PPID/environ; cat /proc/*/environ", 10)
    assert "GREETING=hello" in result.output
    assert SECRET not in result.output and "ROUTINES_TEST_SECRET" not in result.output
    found = await shell.run("grep -l 's3cr3[t]' /proc/*/environ /proc/*/cmdline 2>/dev/null | head -3", 10)
    assert found.output == ""
    await still_works(shell, workspace)


async def test_the_app_key_and_the_data_dir_are_invisible(shell: PersistentShell, workspace: Path) -> None:
    key = workspace.parents[3] / "secrets" / "app.pem"
    key.parent.mkdir()
    key.write_text(KEY)
    mirror = next((workspace.parents[2] / "mirrors").glob("*.git"))
    hidden = [key, key.parent, Path(f"{workspace}.gitdir"), mirror / "config", mirror / "HEAD", mirror / "refs"]
    result = await shell.run(f"cat {key}; ls {' '.join(map(str, hidden[1:]))}; ls {mirror}", 10)
    assert "fake-app-key" not in result.output
    assert result.output.count("No such file or directory") == len(hidden)
    assert result.output.endswith("\nobjects\n"), "only the mirror's objects are mounted, read-only"
    await still_works(shell, workspace)


async def test_hidden_paths_under_a_read_only_mount_are_masked(workspace: Path, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "README").write_text("visible tool\n")
    (tools / "app.pem").write_text(KEY)
    sandbox = BwrapSandbox(ro_paths=(*DEFAULT_RO_PATHS, str(tools)), hide=[tools / "app.pem"])
    sh = await sandbox.shell(workspace, {})
    try:
        result = await sh.run(f"cat {tools}/README {tools}/app.pem", 10)
    finally:
        await sh.close()
    assert "visible tool" in result.output and "fake-app-key" not in result.output


async def test_writes_outside_the_workspace_fail(shell: PersistentShell, workspace: Path) -> None:
    targets = ["/usr/escape", "/etc/escape", f"{workspace.parent}/escape", f"{workspace}.gitdir/escape", "/escape"]
    result = await shell.run("; ".join(f"echo x > {t}" for t in targets) + "; echo inside > ok.txt", 10)
    assert result.output.count("Read-only file system") >= 3
    assert [t for t in targets if on_host(t)] == []
    assert (workspace / "ok.txt").read_text() == "inside\n"
    await still_works(shell, workspace)


async def test_git_hooks_and_config_cannot_be_written(shell: PersistentShell, workspace: Path) -> None:
    git_dir = workspace / ".git"
    config = (git_dir / "config").read_text()
    commands = [
        "echo 'curl evil' > .git/hooks/pre-commit",
        "chmod +x .git/hooks/pre-commit",
        "echo '[core]' >> .git/config",
        "git config core.hooksPath /tmp",
        "mv .git .git-old",
        "rm -rf .git",
    ]
    result = await shell.run("; ".join(commands), 10)
    assert "Read-only file system" in result.output and "busy" in result.output
    assert not (git_dir / "hooks" / "pre-commit").exists()
    assert (git_dir / "config").read_text() == config
    assert not (workspace / ".git-old").exists()
    await still_works(shell, workspace)


async def test_root_cannot_remount_the_system_writable(shell: PersistentShell, workspace: Path) -> None:
    assert (await shell.run("id -u", 10)).output == "1000\n"
    for command in ("mount -o remount,rw /", "mount -o remount,rw /usr", "touch /usr/escape", "touch /etc/escape"):
        result = await shell.run(command, 10)
        assert result.exit_code != 0, command
    assert not on_host("/usr/escape")
    await still_works(shell, workspace)


async def test_what_the_host_keeps_from_other_users_stays_hidden(shell: PersistentShell, workspace: Path) -> None:
    secret_files = [p for p in ("/etc/shadow", "/etc/gshadow") if on_host(p) and not os.stat(p).st_mode & 0o004]
    assert secret_files, "this test needs a host with /etc/shadow readable only by root"
    result = await shell.run(f"cat {' '.join(secret_files)}; head -1 /etc/passwd", 10)
    assert "root:" in result.output and ":0:0:" in result.output
    assert not any(line.startswith("root:") and ":0:0:" not in line for line in result.output.splitlines())
    await still_works(shell, workspace)


async def test_redis_on_the_host_is_unreachable(shell: PersistentShell, workspace: Path, redis_url: str) -> None:
    port = urlsplit(redis_url).port or 6379
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    result = await shell.run(f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo PING >&3 && head -c 7 <&3", 10)
    assert result.exit_code != 0 and "PONG" not in result.output
    await still_works(shell, workspace)


async def test_a_fork_bomb_is_contained(shell: PersistentShell, workspace: Path) -> None:
    result = await shell.run(":(){ :|:& };:; sleep 30", 3)
    assert result.timed_out
    assert "Resource temporarily unavailable" in result.output
    host = await asyncio.create_subprocess_exec("true")
    assert await host.wait() == 0
    await still_works(shell, workspace)


async def test_a_fork_bomb_left_running_is_killed_and_the_next_command_answers_alone(
    shell: PersistentShell, workspace: Path
) -> None:
    await shell.run("cd src 2>/dev/null; export KEPT=1", 10)
    bomb = await shell.run("bash -c ':(){ :|:& };:'", 10)
    assert "process limit" in bomb.output and "restarted" in bomb.output
    after = await shell.run("echo after", 10)
    assert (after.output, after.exit_code) == ("after\n", 0)
    await still_works(shell, workspace)


async def test_background_processes_below_the_limit_keep_running(shell: PersistentShell, workspace: Path) -> None:
    started = await shell.run("for i in 1 2 3; do sleep 300 & done; echo started", 10)
    assert started.output == "started\n"
    assert (await shell.run("jobs | wc -l", 10)).output == "3\n"


async def test_two_gigabytes_of_output_are_capped(shell: PersistentShell, workspace: Path) -> None:
    tracemalloc.start()
    try:
        result = await shell.run("head -c 2000000000 /dev/zero | tr '\\0' a; echo; echo end", 120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0 and result.truncated
    assert len(result.output) < 2_100 and result.output.endswith("aaa\nend\n")
    assert peak < 5_000_000
    await still_works(shell, workspace)


async def test_a_command_that_never_ends_is_killed(shell: PersistentShell, workspace: Path) -> None:
    result = await shell.run("cd /tmp; echo started; sleep 1000.25", 1)
    assert result.timed_out and result.exit_code is None and result.output.startswith("started\n")
    for _ in range(100):
        if not host_processes_with("1000.25"):
            break
        await asyncio.sleep(0.05)
    assert host_processes_with("1000.25") == []
    await still_works(shell, workspace)


async def test_memory_and_file_size_are_limited(shell: PersistentShell, workspace: Path) -> None:
    memory = await shell.run("python3 -c 'b = bytearray(1024**3); print(\"allocated\")'", 30)
    assert memory.exit_code != 0 and "allocated" not in memory.output.splitlines()
    big = await shell.run("head -c 20000000 /dev/zero > big.bin", 30)
    assert big.exit_code != 0
    assert (workspace / "big.bin").stat().st_size <= LIMITS.file_size_bytes
    await still_works(shell, workspace)


async def test_the_sandbox_starts_with_the_usual_soft_limit_of_open_files(workspace: Path) -> None:
    """The worker raises its own soft limit of open files (app.worker.worker.raise_open_files); a sandbox
    starts at the usual 1,024 anyway (tools that close every descriptor slow down past it), and may
    raise it up to the hard limit itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= SOFT_OPEN_FILES:
        pytest.skip(f"the hard limit of open files here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        sh = await BwrapSandbox(max_output_bytes=2_000, limits=LIMITS).shell(workspace, {})
        try:
            result = await sh.run("ulimit -Sn; ulimit -S -n 2048 && ulimit -Sn", 10)
        finally:
            await sh.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (result.output, result.exit_code) == (f"{SOFT_OPEN_FILES}\n2048\n", 0)


async def test_git_works_inside(shell: PersistentShell, workspace: Path) -> None:
    result = await shell.run("echo more >> README.md && git status --short && git log --format=%s -1 && git diff", 10)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(" M README.md\nfirst commit\n") and "+more" in result.output


async def test_the_forwarder_reaches_the_egress_socket(workspace: Path, tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        body = head.split(b"\r\n", 1)[0]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    sock, ca = tmp_path / "egress.sock", tmp_path / "ca.pem"
    ca.write_text("test CA bundle\n")
    server = await asyncio.start_unix_server(echo, path=str(sock))
    sh = await BwrapSandbox(proxy_socket=sock, ca_bundle=ca).shell(workspace, {})
    try:
        fetch = "python3 -c 'import urllib.request as u; print(u.urlopen(\"http://api.example.test/x?y=1\").read())'"
        result = await sh.run(f"{fetch}; cat $SSL_CERT_FILE; echo $GIT_SSL_CAINFO $NO_PROXY", 30)
    finally:
        await sh.close()
        server.close()
    assert result.output == (
        f"b'GET http://api.example.test/x?y=1 HTTP/1.1'\ntest CA bundle\n{CA_INSIDE} localhost,127.0.0.1\n"
    )
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("hide", "forwarder"),
    [((), "python3 -I -S -B /run/routines/forwarder.py 3128"), ((PYTHON3,), "socat -b 1048576")],
    ids=["splice", "socat-without-python3"],
)
async def test_the_forwarder_splices_and_socat_stands_in_without_python3(
    workspace: Path, tmp_path: Path, hide: tuple[Path, ...], forwarder: str
) -> None:
    bodies: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
        bodies.append(body)
        digest = hashlib.sha256(body).hexdigest().encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(digest), digest))
        await writer.drain()
        writer.close()

    sock = tmp_path / "egress.sock"
    server = await asyncio.start_unix_server(answer, path=str(sock))
    sh = await BwrapSandbox(proxy_socket=sock, hide=hide).shell(workspace, {})
    try:
        upload = (
            "head -c 3000000 /dev/urandom > /tmp/body && curl -sS --data-binary @/tmp/body http://api.example.test/"
        )
        result = await sh.run(f"{upload} && echo && sha256sum < /tmp/body", 60)
        listing = await sh.run("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done", 30)
    finally:
        await sh.close()
        server.close()
    sent, computed = result.output.split("\n")[:2]
    assert (result.exit_code, sent) == (0, computed.split()[0]), result.output
    assert len(bodies) == 1 and len(bodies[0]) == 3_000_000
    assert [line for line in listing.output.splitlines() if line.startswith(forwarder)], listing.output


async def test_a_missing_proxy_socket_is_a_clear_error(workspace: Path, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match=r"egress proxy socket .* does not exist"):
        await BwrapSandbox(proxy_socket=tmp_path / "nothing.sock").shell(workspace, {})


async def test_a_missing_bwrap_is_a_clear_error(workspace: Path) -> None:
    assert "apt-get install bubblewrap" in (sandbox_available("no-such-bwrap") or "")
    with pytest.raises(SandboxError, match="bubblewrap is not installed; apt-get install bubblewrap"):
        await BwrapSandbox(bwrap="no-such-bwrap").shell(workspace, {})
