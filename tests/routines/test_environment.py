"""`environment:` in a routine file: what it reads, what it refuses (at the line, with a fix), and that the
JSON Schema agrees."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from app.core.domain import Environment
from app.core.errors import RoutineFileError
from app.routines.files import load_routine, parse_routine, schema


def routine_text(front: str) -> str:
    """`name` and `repo` on lines 2–3, then `front` from line 4."""
    return f"---\nname: demo\nrepo: acme/api\n{front}---\nDo the thing.\n"


def test_no_environment_is_todays_sandbox() -> None:
    assert parse_routine(routine_text(""), "demo.md").environment is None


def test_every_field_is_read() -> None:
    text = routine_text(
        "environment:\n"
        "  image: ghcr.io/acme/dev:1@sha256:" + "a" * 64 + "\n"
        "  setup: [npm ci, npm run build]\n"
        "  cache: [package-lock.json, web/yarn.lock]\n"
        "  env: {NODE_ENV: test}\n"
        "  credentials: GHCR_TOKEN\n"
    )
    assert parse_routine(text, "demo.md").environment == Environment(
        image="ghcr.io/acme/dev:1@sha256:" + "a" * 64,
        setup=("npm ci", "npm run build"),
        cache=("package-lock.json", "web/yarn.lock"),
        env=(("NODE_ENV", "test"),),
        credentials="GHCR_TOKEN",
    )
    single = parse_routine(routine_text("environment: {image: 'node:22-bookworm', setup: npm ci}\n"), "d.md")
    assert single.environment == Environment(image="node:22-bookworm", setup=("npm ci",))
    dev = parse_routine(routine_text("environment: devcontainer\n"), "d.md")
    assert dev.environment == Environment(devcontainer=True)


BAD = [
    ("word", "environment: docker\n", 4, "environment 'docker' is not known"),
    ("empty", "environment: {}\n", 4, "environment is empty"),
    ("image", "environment:\n  image: 'Node 22'\n", 5, "is not an OCI image reference"),
    ("cache-up", "environment:\n  setup: npm ci\n  cache: [../secrets]\n", 6, "is not a path in the repository"),
    ("cache-abs", "environment:\n  setup: npm ci\n  cache: [/etc/passwd]\n", 6, "is not a path in the repository"),
    ("cache-alone", "environment:\n  cache: [package-lock.json]\n", 5, "there is no setup"),
    ("env-reserved", "environment:\n  setup: x\n  env: {HTTPS_PROXY: 'http://evil'}\n", 6, "cannot be set"),
    ("env-name", "environment:\n  setup: x\n  env: {'A-B': x}\n", 6, "cannot be set"),
    ("credentials", "environment:\n  image: alpine\n  credentials: token\n", 6, "is not a secret name"),
    ("creds-alone", "environment:\n  setup: x\n  credentials: TOKEN\n", 6, "there is no image"),
    ("unknown-key", "environment:\n  imag: alpine\n", 5, "imag"),
]


@pytest.mark.parametrize(("text", "line", "phrase"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_wrong_environment_is_refused_at_its_line(tmp_path: Path, text: str, line: int, phrase: str) -> None:
    path = tmp_path / "bad.md"
    path.write_text(routine_text(text), encoding="utf-8")
    with pytest.raises(RoutineFileError) as caught:
        load_routine(path)
    assert caught.value.line == line, str(caught.value)
    assert phrase in caught.value.message, caught.value.message


@pytest.mark.parametrize(
    "environment",
    [
        "devcontainer",
        {"image": "node:22-bookworm", "setup": "npm ci", "cache": ["package-lock.json"]},
        {"image": "127.0.0.1:5000/acme/tools:1", "setup": ["a", "b"], "env": {"X": "1"}, "credentials": "REG"},
    ],
)
def test_the_schema_accepts_what_the_loader_reads(environment: object) -> None:
    front = {"name": "demo", "repo": "acme/api", "environment": environment}
    assert list(jsonschema.Draft202012Validator(schema()).iter_errors(json.loads(json.dumps(front)))) == []


@pytest.mark.parametrize("environment", ["docker", {"image": "Node 22"}, {"imag": "x"}, {"setup": 3}, {}])
def test_the_schema_refuses_what_the_loader_refuses(environment: object) -> None:
    front = {"name": "demo", "repo": "acme/api", "environment": environment}
    assert list(jsonschema.Draft202012Validator(schema()).iter_errors(json.loads(json.dumps(front)))) != []
