"""Whole runs with an environment: an image pulled from a real registry on 127.0.0.1 as the sandbox's root,
setup commands and their saved result, a repository's devcontainer, and every way an environment can fail
before the model is asked anything."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis import asyncio as aioredis

from app.sandbox.bwrap import sandbox_available
from app.sandbox.egress.ca import RunCA
from app.store.vault import Vault, secret_key
from app.testing.anthropic_server import Script, Turn, bash, edit_create, text
from app.testing.https_server import EchoServer
from app.testing.registry import Registry, build_image, registry_missing, running_registry
from app.testing.serve import free_port
from app.testing.stack import Stack, running_stack

pytestmark = [
    pytest.mark.skipif(sandbox_available() is not None, reason=str(sandbox_available())),
    pytest.mark.skipif(registry_missing() is not None, reason=str(registry_missing())),
]

KEY = "test-secret-key-0123456789abcdefghijklmnop"
SECRET = "sntrys_eyJpYXQiOjE3MDAwMDAwMDAsImltYWdlIjp0cnVlfQ"
LOGIN = ("ci-bot", "registry-password-1")
HELLO = "#!/bin/sh\necho hello from the image tool\n"
FORWARDER_SEEN = "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -o 'forwarder.py 3128' | head -1"


@dataclass
class Images:
    registry: Registry
    locked: Registry
    tools: str  # busybox + hello-tool + curl
    private: str  # the same, on the registry that wants a login
    corrupt: str  # a layer whose bytes no longer match its digest


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    root = tmp_path_factory.mktemp("registry")
    with running_registry(root / "open") as registry, running_registry(root / "locked", login=LOGIN) as locked:
        layout = build_image(
            root / "tools",
            executables={"/usr/local/bin/hello-tool": HELLO},
            host_programs=("/usr/bin/curl",),
            env={"IMAGE_GREETING": "from the image config"},
        )
        tools = registry.push(layout, "1", "acme/tools")
        private = locked.push(layout, "1", "acme/tools")
        broken = build_image(root / "broken", files={"/etc/broken": "x" * 200_000})
        corrupt = registry.push(broken, "1", "acme/broken")
        layer = next(b for b in registry.blobs() if b.stat().st_size > 1000 and _in_image(b, registry, "acme/broken"))
        data = bytearray(layer.read_bytes())
        data[len(data) // 2] ^= 0xFF
        layer.write_bytes(bytes(data))
        yield Images(registry, locked, tools, private, corrupt)


def _in_image(blob: Path, registry: Registry, name: str) -> bool:
    """Whether `blob` is a layer of `name`'s only tag, as the registry's own link files say."""
    links = registry.storage / "docker" / "registry" / "v2" / "repositories" / name / "_layers" / "sha256"
    return (links / blob.parent.name).is_dir()


@dataclass
class Upstream:
    server: EchoServer
    port: int


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    ca = RunCA(tmp_path / "upstream-ca")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = EchoServer(ca.server_context("api.allowed.test"))
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    yield Upstream(server, port)
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def routine(name: str, environment: str, *, extra: str = "") -> str:
    return f"---\nname: {name}\nrepo: acme/svc\non: {{api: true}}\n{environment}{extra}---\nWork. [script:{name}]\n"


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, images: Images, upstream: Upstream) -> Iterator[Stack]:
    folder = tmp_path / "routines"
    folder.mkdir()
    down = f"127.0.0.1:{free_port()}"
    env = (
        "  setup: |\n    sleep 1\n    mkdir -p node_modules/dep\n    cat package-lock.json > node_modules/dep/VERSION\n"
    )
    env += '    echo "tool cache" > "$HOME/.tool-cache"\n  cache: [package-lock.json]\n'
    files = {
        "in-image": routine(
            "in-image",
            f"environment: {{image: '{images.tools}'}}\n",
            extra="secrets: [SENTRY_AUTH_TOKEN]\nnetwork: {allow: [api.allowed.test]}\n",
        ),
        "cached": routine("cached", f"environment:\n  image: '{images.tools}'\n{env}"),
        "devcontainer": routine("devcontainer", "environment: devcontainer\n"),
        "plain": routine("plain", ""),
        "unknown-image": routine("unknown-image", f"environment: {{image: '{images.registry.host}/acme/nothing:1'}}\n"),
        "no-login": routine("no-login", f"environment: {{image: '{images.private}'}}\n"),
        "bad-login": routine(
            "bad-login", f"environment: {{image: '{images.private}', credentials: WRONG_REGISTRY_LOGIN}}\n"
        ),
        "login-elsewhere": routine(
            "login-elsewhere", f"environment: {{image: '{images.private}', credentials: GHCR_LOGIN}}\n"
        ),
        "good-login": routine(
            "good-login", f"environment: {{image: '{images.private}', credentials: REGISTRY_LOGIN}}\n"
        ),
        "registry-down": routine("registry-down", f"environment: {{image: '{down}/acme/tools:1'}}\n"),
        "corrupt-layer": routine("corrupt-layer", f"environment: {{image: '{images.corrupt}'}}\n"),
        "setup-fails": routine(
            "setup-fails", f"environment:\n  image: '{images.tools}'\n  setup: echo installing; exit 3\n"
        ),
    }
    for name, content in files.items():
        (folder / f"{name}.md").write_text(content)
    source = tmp_path / "svc"
    source.mkdir()
    (source / "package-lock.json").write_text('{"lockfileVersion": 1}\n')
    (source / "README.md").write_text("# svc\n")
    overrides: dict[str, Any] = {
        "sandbox": "bwrap",
        "secret_key": KEY,
        "insecure_registries": (images.registry.host, images.locked.host, down),
        "egress_hosts": {"api.allowed.test": "127.0.0.1"},
        "egress_ca_file": tmp_path / "upstream-ca" / "ca.pem",
    }
    with running_stack(tmp_path, redis_url, routines_dir=folder, **overrides) as s:
        s.github.add_repo("acme/svc", s.installation, source_dir=source)
        asyncio.run(store_secrets(redis_url, images))
        yield s


async def store_secrets(redis_url: str, images: Images) -> None:
    client = aioredis.Redis.from_url(redis_url)
    vault = Vault(client, secret_key(KEY))
    await vault.set("SENTRY_AUTH_TOKEN", SECRET, ["api.allowed.test"])
    registry = images.locked.host.partition(":")[0]
    await vault.set("REGISTRY_LOGIN", ":".join(LOGIN), [registry])
    await vault.set("WRONG_REGISTRY_LOGIN", "ci-bot:not-the-password", [registry])
    await vault.set("GHCR_LOGIN", ":".join(LOGIN), ["ghcr.io"])  # never sent to another registry
    await client.aclose()


def outputs(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["data"]["output"]) for e in events if e["type"] == "tool.result"]


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == kind]


def pr_files(stack: Stack) -> list[str]:
    pull = stack.github.pulls("acme/svc")[-1]
    bare = stack.github.repos["acme/svc"].path
    listed = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", pull["head"]["ref"]], cwd=bare, capture_output=True, text=True
    )
    return listed.stdout.split()


def test_a_run_in_an_image_finds_its_tools_not_the_hosts_and_no_credential(
    stack: Stack, images: Images, upstream: Upstream
) -> None:
    curl = f'curl -sS -H "Authorization: Bearer $SENTRY_AUTH_TOKEN" https://api.allowed.test:{upstream.port}/echo'
    stack.anthropic.add_script(
        Script(
            match="[script:in-image]",
            turns=[
                Turn([bash('hello-tool; cat /etc/image-release; echo "greeting: $IMAGE_GREETING"')]),
                Turn([bash("test -e /usr/bin/python3 && echo host python || echo no host python; ls /etc")]),
                Turn([bash(curl)]),
                Turn([bash("env | sort; echo home=$HOME; touch $HOME/x && echo home is writable")]),
                Turn([bash("touch /usr/local/bin/mine 2>&1 || echo image is read-only")]),
                Turn([bash(FORWARDER_SEEN)]),
                Turn([edit_create("NOTES.md", "Written in an image.\n")]),
                Turn([text("Image notes\n\nWrote NOTES.md from inside the image.")]),
            ],
        )
    )
    run = stack.wait(stack.fire("in-image").json()["run_id"], timeout_s=120)
    events = stack.events(run["id"])
    assert run["state"] == "succeeded", (run["error"], [e["type"] for e in events])
    out = outputs(events)
    assert "hello from the image tool" in out[0] and "routines test image" in out[0]
    assert "greeting: from the image config" in out[0]
    assert "no host python" in out[1] and "image-release" in out[1] and "shadow" not in out[1]
    assert upstream.server.requests[-1]["headers"]["authorization"] == f"Bearer {SECRET}"  # type: ignore[index]
    assert "home is writable" in out[3] and SECRET not in out[3] and "sntrys_" in out[3]
    for word in ("GITHUB", "ANTHROPIC", "ghs_"):
        assert word not in out[3]
    assert "image is read-only" in out[4] or "Read-only" in out[4]
    assert "forwarder.py 3128" in out[5], "the proxy is reached through the splicing forwarder, not socat"
    dump = json.dumps(events)
    assert SECRET not in dump and (stack.settings.github_app_private_key or "-") not in dump
    image = of_type(events, "environment.image")[0]
    assert image["reference"] == images.tools and image["digest"].startswith("sha256:")
    ready = of_type(events, "environment.ready")[0]
    assert ready["digest"] == image["digest"] and ready["cache"] == "none" and ready["source"] == "routine"
    assert "NOTES.md" in pr_files(stack)


def test_setup_runs_once_per_lockfile_and_the_agent_sees_its_result_every_time(stack: Stack) -> None:
    stack.anthropic.add_script(
        Script(
            match="[script:cached]",
            turns=[
                Turn([bash("cat node_modules/dep/VERSION; cat $HOME/.tool-cache")]),
                Turn([edit_create("CHANGE.md", "done\n")]),
                Turn([text("Change\n\nDone.")]),
            ],
        )
    )

    def one_run() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        run = stack.wait(stack.fire("cached").json()["run_id"], timeout_s=120)
        events = stack.events(run["id"])
        assert run["state"] == "succeeded", (run["error"], [e["type"] for e in events])
        return run, events

    run, first = one_run()
    assert of_type(first, "environment.ready")[0]["cache"] == "miss"
    left = stack.settings.data_dir / "runs" / run["id"]
    assert not (left / "home").exists() and not (left / "exchange").exists(), "a run leaves no $HOME behind"
    assert [s["exit_code"] for s in of_type(first, "environment.setup")] == [0]
    assert of_type(first, "environment.saved")[0]["made"] == ["node_modules"]
    assert '"lockfileVersion": 1' in outputs(first)[0] and "tool cache" in outputs(first)[0]
    files = pr_files(stack)
    assert "CHANGE.md" in files and not any(f.startswith("node_modules") for f in files), files

    # The first run left a spare (its saved setup unpacked ahead): the second moves it into place. Without
    # one (it was taken), the saved setup is unpacked in the sandbox instead, and leaves a spare again.
    for source in ("spare", "saved setup", "spare"):
        if source == "saved setup":
            shutil.rmtree(stack.settings.setups_folder / "spares")
        _, again = one_run()
        assert of_type(again, "environment.ready")[0]["cache"] == "hit"
        assert of_type(again, "environment.restored")[0]["from"] == source
        assert of_type(again, "environment.setup") == []  # the setup did not run again
        assert '"lockfileVersion": 1' in outputs(again)[0] and "tool cache" in outputs(again)[0]
        assert not any(f.startswith("node_modules") for f in pr_files(stack))

    stack.github.commit_files("acme/svc", "main", {"package-lock.json": '{"lockfileVersion": 2}\n'}, "Bump deps")
    _, third = one_run()
    assert of_type(third, "environment.ready")[0]["cache"] == "miss"
    assert len(of_type(third, "environment.setup")) == 1
    assert '"lockfileVersion": 2' in outputs(third)[0]


def test_a_repositorys_devcontainer_gives_its_image_env_and_post_create(stack: Stack, images: Images) -> None:
    devcontainer = {
        "name": "svc",
        "image": images.tools,
        "containerEnv": {"GREETING": "hello from the devcontainer"},
        "postCreateCommand": "echo made-by-post-create > .made",
    }
    # Comments and trailing commas, as devcontainer.json allows
    body = "// the team's dev environment\n" + json.dumps(devcontainer, indent=2)[:-2] + ",\n}\n"
    stack.github.commit_files("acme/svc", "main", {".devcontainer/devcontainer.json": body}, "Add a devcontainer")
    for name in ("devcontainer", "plain"):
        stack.anthropic.add_script(
            Script(
                match=f"[script:{name}]",
                turns=[
                    Turn([bash('cat .made; echo "greeting: $GREETING"; hello-tool || echo no tool here')]),
                    Turn([text("Looked\n\nLooked around.")]),
                ],
            )
        )
    run = stack.wait(stack.fire("devcontainer").json()["run_id"], timeout_s=120)
    events = stack.events(run["id"])
    assert run["state"] == "no_changes", (run["error"], [e["type"] for e in events])
    out = outputs(events)[0]
    assert "made-by-post-create" in out and "greeting: hello from the devcontainer" in out
    assert "hello from the image tool" in out
    assert of_type(events, "environment.ready")[0]["source"] == "devcontainer"

    # A routine without `environment:` keeps the worker's root even where the repository has a devcontainer.
    run = stack.wait(stack.fire("plain").json()["run_id"], timeout_s=120)
    events = stack.events(run["id"])
    assert run["state"] == "no_changes", run["error"]
    assert "no tool here" in outputs(events)[0] and not of_type(events, "environment.ready")


def test_a_registry_login_from_the_vault_pulls_a_private_image(stack: Stack) -> None:
    stack.anthropic.add_script(
        Script(match="[script:good-login]", turns=[Turn([bash("hello-tool")]), Turn([text("Done\n\nRan it.")])])
    )
    run = stack.wait(stack.fire("good-login").json()["run_id"], timeout_s=120)
    events = stack.events(run["id"])
    assert run["state"] == "no_changes", run["error"]
    assert "hello from the image tool" in outputs(events)[0]
    assert LOGIN[1] not in json.dumps(events)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("unknown-image", "does not exist"),
        ("no-login", "refused"),
        ("bad-login", "refused"),
        ("login-elsewhere", "may only be sent to ghcr.io"),
        ("registry-down", "cannot be reached"),
        ("corrupt-layer", "corrupt"),
        ("setup-fails", "exit 3"),
    ],
)
def test_an_environment_that_cannot_be_made_fails_the_run_before_the_model_is_asked(
    stack: Stack, name: str, reason: str
) -> None:
    asked = len(stack.anthropic.requests)
    run = stack.wait(stack.fire(name).json()["run_id"], timeout_s=120)
    assert run["state"] == "failed" and reason in run["error"], run["error"]
    assert len(stack.anthropic.requests) == asked, "the model was asked although the environment failed"
    if name == "setup-fails":
        setup = of_type(stack.events(run["id"]), "environment.setup")[0]
        assert setup["exit_code"] == 3 and "installing" in setup["output"]
    folder = stack.settings.images_folder
    leftovers = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    assert not [p for p in leftovers if p.startswith(".pull-")], "a half-pulled image was left behind"
