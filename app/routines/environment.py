"""`environment:` in a routine file: an OCI image as the sandbox's root, setup commands, and their cache keys.

    environment: devcontainer                    # the repository's .devcontainer/devcontainer.json
    environment:
      image: node:22-bookworm                    # any OCI image reference; pulled by the worker
      setup: npm ci                              # or a list; runs in the sandbox before the agent
      cache: [package-lock.json]                 # unchanged → the setup's saved result is reused
      env: {NODE_ENV: test}
      credentials: REGISTRY_TOKEN                # vault secret for the registry: user:password or a token
"""

from __future__ import annotations

import re

import yaml

from app.core.domain import Environment
from app.routines.reader import Reader

ENVIRONMENT_KEYS = ("image", "setup", "cache", "env", "credentials")
# The reference grammar of the OCI distribution spec: [host[:port]/]path[:tag][@digest]
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_PATTERN = (
    rf"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    rf"(?::[0-9]+)?)/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?$"
)
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAX_SETUP_CHARS = 20_000
# What the sandbox sets itself: its home, the egress proxy and the run's CA bundle
_RESERVED_ENV = frozenset(
    {"HOME", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_FILE"}
    | {"BASH_ENV", "ENV", "LD_PRELOAD", "LD_LIBRARY_PATH", "PROMPT_COMMAND"}
    | {"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS"}
)


def check_image(reference: str) -> str | None:
    """Why `reference` is not an image reference, or None."""
    if len(reference) > 255 or not re.fullmatch(IMAGE_PATTERN.removeprefix("^").removesuffix("$"), reference):
        return f"image {reference!r} is not an OCI image reference — write e.g. node:22-bookworm or ghcr.io/acme/dev:1"
    return None


def check_env_name(name: str) -> str | None:
    """Why `name` cannot be a variable of the sandbox (the proxy's, the CA's, HOME…), or None."""
    if not re.fullmatch(ENV_NAME.removeprefix("^").removesuffix("$"), name) or name in _RESERVED_ENV:
        return f"variable {name!r} cannot be set — use letters, digits and '_', and not the sandbox's own"
    return None


def check_cache_path(path: str) -> str | None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        return f"cache entry {path!r} is not a path in the repository — write e.g. package-lock.json or web/yarn.lock"
    return None


def read_environment(r: Reader, node: yaml.Node) -> Environment:
    example = "environment: {image: node:22-bookworm, setup: npm ci, cache: [package-lock.json]}"
    if isinstance(node, yaml.ScalarNode):
        word = r.string(node, "environment", "environment: devcontainer")
        if word != "devcontainer":
            raise r.error(node, f"environment {word!r} is not known — write `environment: devcontainer` or {example}")
        return Environment(devcontainer=True)
    entries = r.mapping(node, "environment", ENVIRONMENT_KEYS, example)
    if not entries:
        raise r.error(node, f"environment is empty — remove it, or write {example}")
    image = None
    if "image" in entries:
        image_node = entries["image"][1]
        image = r.string(image_node, "environment.image", "image: node:22-bookworm")
        if (problem := check_image(image)) is not None:
            raise r.error(image_node, problem)
    setup: tuple[str, ...] = ()
    if "setup" in entries:
        items = r.strings(entries["setup"][1], "environment.setup", "setup: npm ci", single=True)
        setup = tuple(value for value, _ in items)
        if sum(len(s) for s in setup) > MAX_SETUP_CHARS:
            raise r.error(entries["setup"][1], f"environment.setup is over {MAX_SETUP_CHARS} characters — use a script")
    cache: tuple[str, ...] = ()
    if "cache" in entries:
        paths = r.strings(entries["cache"][1], "environment.cache", "cache: [package-lock.json]", single=True)
        for path, item in paths:
            if (problem := check_cache_path(path)) is not None:
                raise r.error(item, problem)
        cache = tuple(p for p, _ in paths)
        if not setup:
            raise r.error(entries["cache"][0], "environment.cache keys the result of setup, and there is no setup")
    env: tuple[tuple[str, str], ...] = ()
    if "env" in entries:
        env = _env(r, entries["env"][1])
    credentials = None
    if "credentials" in entries:
        cred_node = entries["credentials"][1]
        credentials = r.string(cred_node, "environment.credentials", "credentials: REGISTRY_TOKEN")
        if not re.match(r"^[A-Z][A-Z0-9_]*$", credentials):
            raise r.error(cred_node, f"environment.credentials {credentials!r} is not a secret name, e.g. GHCR_TOKEN")
        if image is None:
            raise r.error(cred_node, "environment.credentials log in to the image's registry, and there is no image")
    return Environment(image=image, setup=setup, cache=cache, env=env, credentials=credentials)


def _env(r: Reader, node: yaml.Node) -> tuple[tuple[str, str], ...]:
    pairs = []
    for name, (key_node, value_node) in r.mapping(node, "environment.env", (), "env: {NODE_ENV: test}").items():
        if check_env_name(name) is not None:
            raise r.error(key_node, f"environment.env name {name!r} cannot be set — use letters, digits and '_'")
        pairs.append((name, r.string(value_node, f"environment.env.{name}", f"{name}: value")))
    return tuple(pairs)
