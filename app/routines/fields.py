"""The front matter's fields, read and checked one by one into an `app.core.domain.Routine`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import yaml

from app.core.domain import JSON, Concurrency, Connector, Limits, Routine
from app.routines.environment import read_environment
from app.routines.reader import Reader, unknown
from app.routines.schema import (
    CONNECTOR_NAME_PATTERN,
    GROUP_PLACEHOLDERS,
    HOST_PATTERN,
    LIMIT_KEYS,
    NAME_PATTERN,
    OUTPUT_KEYS,
    OWNER_NAME_PATTERN,
    PERMISSIONS,
    SECRET_PATTERN,
    TOOLS,
    TOP_KEYS,
)
from app.routines.triggers import read_on

PLACEHOLDER = re.compile(r"{{\s*([A-Za-z_]\w*)\s*}}")
_BAD_REF = re.compile(r"(^[-/.])|(\.\.)|(//)|([\s~^:?*\[\\\x00-\x1f\x7f])|(@\{)|([/.]$)|(\.lock$)")
_ELSEWHERE = {
    **dict.fromkeys(("schedule", "api", "github", "cron", "timezone"), "on"),
    **dict.fromkeys(LIMIT_KEYS, "limits"),
    **dict.fromkeys(OUTPUT_KEYS, "outputs"),
    "allow": "network",
    "group": "concurrency",
    "cancel_in_progress": "concurrency",
}
_OUTPUT_NEEDS = {"pull_request": ("contents", "pull_requests"), "review": ("pull_requests",), "issue": ("issues",)}


def build_routine(r: Reader, root: yaml.Node, prompt: str, min_interval_s: float) -> Routine:
    """The routine described by the front matter `root` (a mapping node) and the prompt below it."""
    entries = r.mapping(root, "the front matter", TOP_KEYS, "name: my-routine", _ELSEWHERE)
    for required, example in (("name", "name: nightly-bugfix"), ("repo", "repo: acme/api")):
        if required not in entries:
            raise r.error(root, f"the front matter has no {required!r} — add `{example}`")
    name = _name(r, entries["name"][1])
    fields: dict[str, Any] = {"name": name, "repo": _repo(r, entries["repo"][1]), "prompt": prompt, "source": r.source}
    readers: dict[str, Callable[[yaml.Node], Any]] = {
        "description": lambda n: r.string(n, "description", "description: What this routine does"),
        "base": lambda n: _base(r, n),
        "on": lambda n: read_on(r, n, name, min_interval_s),
        "model": lambda n: _model(r, n),
        "tools": lambda n: tuple(_choices(r, n, "tools", TOOLS, "tools: [bash, edit]")),
        "network": lambda n: _network(r, n),
        "secrets": lambda n: _secrets(r, n),
        "connectors": lambda n: _connectors(r, n),
        "outputs": lambda n: _outputs(r, n),
        "limits": lambda n: _limits(r, n),
        "concurrency": lambda n: _concurrency(r, n),
        "environment": lambda n: read_environment(r, n),
    }
    for key, read in readers.items():
        if key in entries:
            fields[key] = read(entries[key][1])
    if "network" in fields:
        fields["network_allow"], fields["network_defaults"] = fields.pop("network")
    outputs = fields.setdefault("outputs", {"pull_request": {"draft": True}})
    if "permissions" in entries:
        fields["permissions"] = _permissions(r, entries["permissions"][1], outputs)
    else:
        fields["permissions"] = _default_permissions(outputs)
    return Routine(**fields)


def _name(r: Reader, node: yaml.Node) -> str:
    name = r.string(node, "name", "name: nightly-bugfix")
    if not re.match(NAME_PATTERN, name):
        raise r.error(
            node,
            f"name {name!r} is not valid — use 1–63 lowercase letters, digits and '-', starting with a letter "
            "or digit (it becomes part of branch names routines/<name>/<run>)",
        )
    return name


def _repo(r: Reader, node: yaml.Node) -> str | tuple[str, ...]:
    hint = "repo: acme/api, a local path (/srv/git/api or ./api), '*' or a list of owner/name"
    if isinstance(node, yaml.SequenceNode):
        repos = r.strings(node, "repo", "repo: [acme/api, acme/web]")
        for value, item in repos:
            if not re.match(OWNER_NAME_PATTERN, value):
                raise r.error(item, f"repo {value!r} in the list is not owner/name — write e.g. acme/api")
        if not repos:
            raise r.error(node, f"repo is an empty list — write {hint}")
        return tuple(value for value, _ in repos)
    repo = r.string(node, "repo", hint)
    if repo == "*" or re.match(OWNER_NAME_PATTERN, repo) or repo.startswith(("/", "./", "../")):
        return repo
    raise r.error(node, f"repo {repo!r} is neither owner/name nor a local path — write {hint}")


def _base(r: Reader, node: yaml.Node) -> str:
    base = r.string(node, "base", "base: main")
    if _BAD_REF.search(base) or base.startswith("refs/"):
        raise r.error(node, f"base {base!r} is not a branch name — write the branch's short name, e.g. base: main")
    return base


def _model(r: Reader, node: yaml.Node) -> str:
    model = r.string(node, "model", "model: claude-sonnet-4-6")
    if not model.startswith("claude-"):
        raise r.error(node, f"model {model!r} is not a Claude model — write a model id such as claude-sonnet-4-6")
    return model


def _choices(r: Reader, node: yaml.Node, where: str, known: tuple[str, ...], example: str) -> list[str]:
    items = r.strings(node, where, example)
    for value, item in items:
        if value not in known:
            raise r.error(item, unknown(f"{where[:-1]} {value!r}", value, known))
    return [value for value, _ in items]


def _network(r: Reader, node: yaml.Node) -> tuple[tuple[str, ...], bool]:
    """`(allow, defaults)`: the hosts, and whether the package registries stay reachable too."""
    entries = r.mapping(node, "network", ("allow", "defaults"), "network: {allow: [sentry.io]}")
    defaults = r.boolean(entries["defaults"][1], "network.defaults") if "defaults" in entries else True
    if "allow" not in entries:
        return (), defaults
    hosts = []
    for host, item in r.strings(entries["allow"][1], "network.allow", "allow: [sentry.io, '*.sentry.io']"):
        parts = urlsplit(host if "://" in host else f"//{host}")
        if "://" in host or parts.path not in ("", "/") or parts.port is not None:
            raise r.error(
                item, f"network.allow entry {host!r} is not a host name — write the host only: {parts.hostname}"
            )
        if host == "*" or not re.match(HOST_PATTERN, host.lower()):
            raise r.error(
                item, f"network.allow entry {host!r} is not a host name — write e.g. sentry.io or *.sentry.io"
            )
        hosts.append(host.lower())
    return tuple(hosts), defaults


def _secret_name(r: Reader, node: yaml.Node, value: str, where: str) -> str:
    if not re.match(SECRET_PATTERN, value):
        upper = re.sub(r"[^A-Z0-9_]", "_", value.upper())
        raise r.error(node, f"{where} {value!r} is not a secret name — use capitals, digits and '_', e.g. {upper}")
    return value


def _secrets(r: Reader, node: yaml.Node) -> tuple[str, ...]:
    items = r.strings(node, "secrets", "secrets: [SENTRY_AUTH_TOKEN]")
    return tuple(_secret_name(r, item, value, "secret") for value, item in items)


def _connectors(r: Reader, node: yaml.Node) -> tuple[Connector, ...]:
    example = 'linear: {url: "https://mcp.linear.app/mcp", secret: LINEAR_TOKEN}'
    connectors = []
    for name, (key_node, value_node) in r.mapping(node, "connectors", (), example).items():
        if not re.match(CONNECTOR_NAME_PATTERN, name):
            raise r.error(key_node, f"connector name {name!r} is not valid — use letters, digits, '-' and '_'")
        entries = r.mapping(value_node, f"connectors.{name}", ("url", "secret"), example)
        if "url" not in entries:
            raise r.error(value_node, f"connector {name!r} has no url — write {example}")
        url_node = entries["url"][1]
        url = r.string(url_node, f"connectors.{name}.url", 'url: "https://mcp.example.com/mcp"')
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise r.error(
                url_node, f"connector url {url!r} is not an http(s) URL — write e.g. https://mcp.linear.app/mcp"
            )
        secret = None
        if "secret" in entries:
            secret_node = entries["secret"][1]
            secret = r.string(secret_node, f"connectors.{name}.secret", "secret: LINEAR_TOKEN")
            _secret_name(r, secret_node, secret, "connector secret")
        connectors.append(Connector(name=name, url=url, secret=secret))
    return tuple(connectors)


def _permissions(r: Reader, node: yaml.Node, outputs: JSON) -> dict[str, str]:
    example = "permissions: {contents: write, pull_requests: write}"
    permissions: dict[str, str] = {}
    for name, (key_node, value_node) in r.mapping(node, "permissions", (), example).items():
        if name not in PERMISSIONS:
            raise r.error(key_node, unknown(f"GitHub permission {name!r}", name, PERMISSIONS))
        level = r.string(value_node, f"permissions.{name}", f"{name}: read")
        if level not in ("read", "write"):
            raise r.error(value_node, f"permission level {level!r} for {name} is not allowed — use read or write")
        if name == "metadata" and level == "write":
            raise r.error(value_node, "metadata can only be read — write metadata: read")
        permissions[name] = level
    if "contents" not in permissions:
        raise r.error(node, "permissions lack contents — add contents: read (runs check out the repository)")
    missing = _missing_permission(permissions, outputs)
    if missing:
        raise r.error(node, f"permissions lack {missing} — add it or remove that output")
    return permissions


def _missing_permission(permissions: dict[str, str], outputs: JSON) -> str | None:
    for output, names in _OUTPUT_NEEDS.items():
        for name in names:
            if outputs.get(output) and permissions.get(name) != "write":
                return f"{name}: write (for outputs.{output})"
    if outputs.get("comment") and "write" not in (permissions.get("issues"), permissions.get("pull_requests")):
        return "issues: write (for outputs.comment)"
    return None


def _default_permissions(outputs: JSON) -> dict[str, str]:
    """The least the outputs need: contents to check out, plus write access for each output."""
    permissions = {"contents": "read", "metadata": "read"}
    for output, names in _OUTPUT_NEEDS.items():
        if outputs.get(output):
            permissions.update(dict.fromkeys(names, "write"))
    if outputs.get("comment"):
        permissions["issues"] = "write"
    return permissions


def _outputs(r: Reader, node: yaml.Node) -> JSON:
    outputs: JSON = {}
    for key, (_, value_node) in r.mapping(node, "outputs", OUTPUT_KEYS, "outputs: {pull_request: true}").items():
        if key == "notify":
            outputs[key] = _notify(r, value_node)
        elif key == "pull_request" and isinstance(value_node, yaml.MappingNode):
            entries = r.mapping(value_node, "outputs.pull_request", ("draft",), "pull_request: {draft: true}")
            if "draft" in entries and not r.boolean(entries["draft"][1], "outputs.pull_request.draft"):
                raise r.error(
                    entries["draft"][1],
                    "runs only open draft pull requests (a person marks them ready) — write draft: true or remove it",
                )
            outputs[key] = {"draft": True}
        elif r.boolean(value_node, f"outputs.{key}"):
            outputs[key] = {"draft": True} if key == "pull_request" else True
    return outputs


def _notify(r: Reader, node: yaml.Node) -> list[str]:
    targets = []
    for value, item in r.strings(node, "outputs.notify", "notify: [slack:ENG_WEBHOOK]", single=True):
        kind, _, secret = value.partition(":")
        if kind != "slack" or not secret:
            raise r.error(item, f"notify target {value!r} is not slack:SECRET — write e.g. slack:ENG_WEBHOOK")
        _secret_name(r, item, secret, "notify secret")
        targets.append(value)
    return targets


def _limits(r: Reader, node: yaml.Node) -> Limits:
    entries = r.mapping(node, "limits", LIMIT_KEYS, "limits: {max_turns: 60, max_minutes: 30}")
    values: dict[str, Any] = {}
    for key, (_, value_node) in entries.items():
        example = f"{key}: {getattr(Limits(), key) or 5}"
        if key in ("max_turns", "runs_per_day"):
            values[key] = r.integer(value_node, f"limits.{key}", example)
        else:
            values[key] = r.positive(value_node, f"limits.{key}", example)
    return Limits(**values)


def _concurrency(r: Reader, node: yaml.Node) -> Concurrency:
    example = 'concurrency: {group: "{{ repo }}", cancel_in_progress: false}'
    entries = r.mapping(node, "concurrency", ("group", "cancel_in_progress"), example)
    group = None
    if "group" in entries:
        group_node = entries["group"][1]
        group = r.string(group_node, "concurrency.group", 'group: "{{ repo }}"')
        for placeholder in PLACEHOLDER.findall(group):
            if placeholder not in GROUP_PLACEHOLDERS:
                known = " or ".join(f"{{{{ {p} }}}}" for p in GROUP_PLACEHOLDERS)
                raise r.error(group_node, f"concurrency.group uses unknown {{{{ {placeholder} }}}} — use {known}")
    cancel = False
    if "cancel_in_progress" in entries:
        cancel = r.boolean(entries["cancel_in_progress"][1], "concurrency.cancel_in_progress")
    return Concurrency(group=group, cancel_in_progress=cancel)
