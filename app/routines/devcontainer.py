"""An Environment from a repository's `.devcontainer/devcontainer.json` (or `.devcontainer.json`).

The file is JSON with comments and trailing commas (the spec's "JSONC"). Honoured: `image`,
`containerEnv` and `remoteEnv` (as the sandbox's variables), and the lifecycle commands that prepare a
workspace — `onCreateCommand`, `updateContentCommand`, `postCreateCommand`, in that order — each a
string (a shell command), a list (one command, its words), or an object of named commands (run in
name order). Refused with a message: `build` / `dockerFile` (a Dockerfile needs a container engine the
worker does not have) and `features` (they install by running code as root in a build). Everything
else (ports, customizations, mounts, users) does not apply to a sandboxed run and is ignored.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from app.core.domain import Environment
from app.core.errors import ConfigError
from app.routines.environment import check_env_name, check_image

PATHS = (".devcontainer/devcontainer.json", ".devcontainer.json")
MAX_BYTES = 256 * 1024
LIFECYCLE = ("onCreateCommand", "updateContentCommand", "postCreateCommand")
# Lockfiles whose contents key the saved setup when the devcontainer does not say (at the repository root)
LOCKFILES = (
    "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "bun.lockb",
    "poetry.lock", "uv.lock", "Pipfile.lock", "requirements.txt", "requirements-dev.txt",
    "Cargo.lock", "go.sum", "Gemfile.lock", "composer.lock", "mix.lock",
)  # fmt: skip


def strip_jsonc(text: str) -> str:
    """`text` without `//` and `/* */` comments and without trailing commas, strings left untouched."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif c in "]}":
            k = len(out) - 1
            while k >= 0 and out[k].isspace():
                k -= 1
            if k >= 0 and out[k] == ",":
                del out[k]
            out.append(c)
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_devcontainer(text: str, where: str, present: set[str] | None = None) -> Environment:
    """The Environment `text` (a devcontainer.json at `where`) describes; ConfigError saying what to fix.
    `present`: the repository's root file names, to key the setup's cache by the lockfiles among them."""
    try:
        data = json.loads(strip_jsonc(text))
    except (ValueError, RecursionError) as exc:
        fix = "fix it, or give the routine environment: {image: …}"
        raise ConfigError(f"{where} is not JSON with comments ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} is not a JSON object")
    if "build" in data or "dockerFile" in data or "dockerfile" in data:
        raise ConfigError(
            f"{where} builds its image from a Dockerfile, which needs a container engine the worker does not have; "
            "publish the image to a registry and name it with `image`, or give the routine environment: {image: …}"
        )
    if data.get("features"):
        raise ConfigError(
            f"{where} adds devcontainer features, which install by running code as root in a build; "
            "bake them into an image and name it with `image`"
        )
    image = data.get("image")
    if not isinstance(image, str) or not image:
        raise ConfigError(f"{where} names no image; add \"image\": \"mcr.microsoft.com/devcontainers/base:bookworm\"")
    if (problem := check_image(image)) is not None:
        raise ConfigError(f"{where}: {problem}")
    env: dict[str, str] = {}
    for key in ("containerEnv", "remoteEnv"):
        values = data.get(key) or {}
        if not isinstance(values, dict) or not all(isinstance(v, str | None) for v in values.values()):
            raise ConfigError(f"{where}: {key} must map names to strings")
        for name in values:
            if (problem := check_env_name(str(name))) is not None:
                raise ConfigError(f"{where}: {key}: {problem}")
        env.update({str(k): str(v) for k, v in values.items() if v is not None})
    setup = tuple(command for key in LIFECYCLE for command in _commands(data.get(key), f"{where}: {key}"))
    cache = tuple(sorted(name for name in (present or set()) if name in LOCKFILES)) if setup else ()
    return Environment(image=image, setup=setup, cache=cache, env=tuple(sorted(env.items())), devcontainer=True)


def _commands(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list) and all(isinstance(word, str) for word in value):
        return [shlex.join(value)] if value else []
    if isinstance(value, dict):
        return [command for name in sorted(value) for command in _commands(value[name], f"{where}.{name}")]
    raise ConfigError(f"{where} must be a command string, a list of words, or an object of commands")
