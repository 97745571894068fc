"""A repository's devcontainer.json as a run's environment: JSON with comments, the lifecycle commands in
order, variables, lockfiles keying the setup, and the builds the worker cannot do refused with a fix."""

from __future__ import annotations

import pytest

from app.core.domain import Environment
from app.core.errors import ConfigError
from app.routines.devcontainer import parse_devcontainer, strip_jsonc

WHERE = ".devcontainer/devcontainer.json"


def test_comments_and_trailing_commas_go_strings_stay() -> None:
    text = '{\n  // a comment\n  "a": "http://x//y", /* block */ "b": [1, 2,],\n}\n'
    assert strip_jsonc(text).replace(" ", "").replace("\n", "") == '{"a":"http://x//y","b":[1,2]}'
    assert strip_jsonc('{"q": "say \\"hi\\" // not a comment"}') == '{"q": "say \\"hi\\" // not a comment"}'


def test_image_variables_and_lifecycle_commands_in_order() -> None:
    text = """{
      "name": "svc",
      "image": "mcr.microsoft.com/devcontainers/typescript-node:22",
      "containerEnv": {"NODE_ENV": "test"},
      "remoteEnv": {"EDITOR": "vi", "UNSET": null},
      "postCreateCommand": {"b": "npm run build", "a": ["npm", "ci", "--no-audit"]},
      "onCreateCommand": "echo created",
      "updateContentCommand": "",
      "forwardPorts": [3000],
      "customizations": {"vscode": {}},
    }"""
    environment = parse_devcontainer(text, WHERE, {"package-lock.json", "README.md"})
    assert environment == Environment(
        image="mcr.microsoft.com/devcontainers/typescript-node:22",
        setup=("echo created", "npm ci --no-audit", "npm run build"),
        cache=("package-lock.json",),
        env=(("EDITOR", "vi"), ("NODE_ENV", "test")),
        devcontainer=True,
    )


def test_no_commands_means_no_cache_key() -> None:
    environment = parse_devcontainer('{"image": "alpine:3"}', WHERE, {"package-lock.json"})
    assert environment.setup == () and environment.cache == ()


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ('{"build": {"dockerfile": "Dockerfile"}}', "needs a container engine"),
        ('{"dockerFile": "Dockerfile"}', "needs a container engine"),
        ('{"image": "alpine", "features": {"ghcr.io/devcontainers/features/node:1": {}}}', "features"),
        ('{"name": "no image"}', "names no image"),
        ('{"image": "Not An Image"}', "is not an OCI image reference"),
        ('{"image": "alpine", "postCreateCommand": 3}', "must be a command string"),
        ('{"image": "alpine", "containerEnv": {"A": 1}}', "must map names to strings"),
        ("{not json", "is not JSON with comments"),
        ("[1]", "is not a JSON object"),
        ('{"image": "alpine", "containerEnv": {"HOME": "/root"}}', "cannot be set"),
        ('{"image": "alpine", "remoteEnv": {"BASH_ENV": "/x"}}', "cannot be set"),
        ('{"image": "alpine", "containerEnv": {"A=B": "x"}}', "cannot be set"),
        ('{"image": "alpine\\n"}', "is not an OCI image reference"),
        ("[" * 100_000 + "]" * 100_000, "is not JSON with comments"),
    ],
)
def test_what_the_worker_cannot_do_is_refused_with_a_fix(text: str, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase) as caught:
        parse_devcontainer(text, WHERE)
    assert WHERE in str(caught.value)
