"""The local sandbox: one bash per run, clean environment, no isolation.

`LocalShell` runs the persistent shell (`shell.py`) directly here, as `bwrap.py` runs it inside
bubblewrap. The local sandbox gives the agent no credential (the worker's environment never
reaches it) but does not confine the file system or the network; its hands process (the editor
and staging, `app.hands`) runs as a plain child process. Use it for development and trusted
repositories.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from app.core.errors import SandboxError
from app.sandbox.hands import HandsProcess, SandboxHands
from app.sandbox.runtime import alternates, hands_argv, local_runtime
from app.sandbox.shell import DEFAULT_PATH, PersistentShell


class LocalSandbox:
    """Starts `LocalShell`s; `max_output_bytes` caps what one command's result keeps."""

    name = "local"

    def __init__(self, *, max_output_bytes: int = 30_000, path: str = DEFAULT_PATH) -> None:
        self.max_output_bytes = max_output_bytes
        self.path = path

    async def shell(self, workdir: Path, env: dict[str, str]) -> LocalShell:
        """A started shell in `workdir` whose environment is PATH, HOME, LANG, TERM and `env` only."""
        shell = LocalShell(workdir, env, path=self.path, max_output_bytes=self.max_output_bytes)
        await shell.restart()
        return shell

    async def hands(self, workdir: Path, env: dict[str, str]) -> SandboxHands:
        """The shell of `shell()`, and a hands process working on `workdir` as a plain child process."""
        shell = await self.shell(workdir, env)
        stage = workdir.with_name(workdir.name + ".stage")
        config = {
            "workspace": str(workdir),
            "root": str(workdir),
            "gitdir": str(stage),
            "alternates": alternates(workdir),
        }
        process = HandsProcess(hands_argv(local_runtime(), config), cwd=str(workdir), env=_plain_env(self.path))
        return SandboxHands(shell, process, workdir, cleanup=(stage,))


class LocalShell(PersistentShell):
    """A `PersistentShell` running bash directly in `workdir`, with a private HOME and a clean environment."""

    def __init__(self, workdir: Path, env: dict[str, str], *, path: str, max_output_bytes: int) -> None:
        super().__init__(_LocalLauncher(workdir, env, path), workdir=workdir, max_output_bytes=max_output_bytes)


class _LocalLauncher:
    def __init__(self, workdir: Path, env: dict[str, str], path: str) -> None:
        self._workdir = workdir
        self._env = dict(env)
        self._path = path
        self._home: Path | None = None

    async def spawn(self) -> asyncio.subprocess.Process:
        if self._home is None:
            self._home = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="routines-home-"))
        env = {"PATH": self._path, "HOME": str(self._home), "LANG": "C.UTF-8", "TERM": "dumb", **self._env}
        try:
            return await asyncio.create_subprocess_exec(
                "bash",
                "--noprofile",
                "--norc",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self._workdir,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxError(
                f"cannot start bash in {self._workdir}: {exc.strerror}; "
                "check that bash is on PATH and the directory exists"
            ) from None

    async def reap(self) -> None:
        return None

    def crowded(self) -> bool:
        return False

    async def close(self) -> None:
        if self._home is not None:
            await asyncio.to_thread(shutil.rmtree, self._home, True)
            self._home = None


def _plain_env(path: str) -> dict[str, str]:
    return {"PATH": path, "LANG": "C.UTF-8", "HOME": "/nonexistent"}
