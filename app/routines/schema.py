"""The vocabulary of routine files, and the JSON Schema editors use to check their front matter.

The validator (`app.routines.fields`, `app.routines.triggers`) and the schema are built from the same
constants, so they cannot drift. `app/routines/routine.schema.json` is this module's output:
`python -m app.routines.schema > app/routines/routine.schema.json`.
"""

from __future__ import annotations

import json
from typing import Any

from app.routines.environment import ENV_NAME, IMAGE_PATTERN

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
SECRET_PATTERN = r"^[A-Z][A-Z0-9_]*$"
OWNER_NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$"
HOST_PATTERN = r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
CONNECTOR_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"

TOP_KEYS = (
    "name",
    "description",
    "repo",
    "base",
    "on",
    "model",
    "tools",
    "network",
    "secrets",
    "connectors",
    "permissions",
    "outputs",
    "limits",
    "concurrency",
    "environment",
)
ON_KEYS = ("schedule", "api", "github")
SCHEDULE_KEYS = ("cron", "timezone")
TOOLS = ("bash", "edit", "web_fetch", "web_search", "memory")
OUTPUT_KEYS = ("pull_request", "review", "comment", "issue", "notify")
LIMIT_KEYS = ("max_turns", "max_minutes", "max_cost_usd", "runs_per_day")
GROUP_PLACEHOLDERS = ("repo", "routine")
AUTHOR_ASSOCIATIONS = (
    "OWNER",
    "MEMBER",
    "COLLABORATOR",
    "CONTRIBUTOR",
    "FIRST_TIME_CONTRIBUTOR",
    "FIRST_TIMER",
    "NONE",
)
EVENT_FILTER_KEYS = (
    "types",
    "labels",
    "branches",
    "branches-ignore",
    "tags",
    "tags-ignore",
    "paths",
    "paths-ignore",
    "mention",
    "author_association",
    "draft",
    "forks",
    "authors",
)

# Repository-scoped GitHub App permissions; `metadata` can only be read.
PERMISSIONS = (
    "actions",
    "administration",
    "attestations",
    "checks",
    "contents",
    "deployments",
    "discussions",
    "environments",
    "issues",
    "merge_queues",
    "metadata",
    "packages",
    "pages",
    "pull_requests",
    "repository_custom_properties",
    "repository_hooks",
    "repository_projects",
    "secret_scanning_alerts",
    "secrets",
    "security_events",
    "statuses",
    "variables",
    "vulnerability_alerts",
    "workflows",
)

_ISSUE_LIKE = ("created", "edited", "deleted")
# Repository webhook events a routine may react to, with their activity types (empty: no `types`).
GITHUB_EVENTS: dict[str, tuple[str, ...]] = {
    "branch_protection_rule": _ISSUE_LIKE,
    "check_run": ("created", "rerequested", "completed", "requested_action"),
    "check_suite": ("completed", "requested", "rerequested"),
    "code_scanning_alert": ("appeared_in_branch", "closed_by_user", "created", "fixed", "reopened", "reopened_by_user"),
    "commit_comment": ("created",),
    "create": (),
    "delete": (),
    "dependabot_alert": (
        "auto_dismissed",
        "auto_reopened",
        "created",
        "dismissed",
        "fixed",
        "reintroduced",
        "reopened",
    ),
    "deployment": ("created",),
    "deployment_status": ("created",),
    "discussion": (
        *("created", "edited", "deleted", "transferred", "pinned", "unpinned", "labeled", "unlabeled"),
        *("locked", "unlocked", "category_changed", "answered", "unanswered"),
    ),
    "discussion_comment": _ISSUE_LIKE,
    "fork": (),
    "gollum": (),
    "issue_comment": _ISSUE_LIKE,
    "issues": (
        *("opened", "edited", "deleted", "transferred", "pinned", "unpinned", "closed", "reopened", "assigned"),
        *("unassigned", "labeled", "unlabeled", "locked", "unlocked", "milestoned", "demilestoned", "typed", "untyped"),
    ),
    "label": _ISSUE_LIKE,
    "merge_group": ("checks_requested", "destroyed"),
    "milestone": ("created", "closed", "opened", "edited", "deleted"),
    "page_build": (),
    "public": (),
    "pull_request": (
        *("assigned", "unassigned", "labeled", "unlabeled", "opened", "edited", "closed", "reopened", "synchronize"),
        *("converted_to_draft", "ready_for_review", "locked", "unlocked", "review_requested"),
        *("review_request_removed", "auto_merge_enabled", "auto_merge_disabled", "milestoned", "demilestoned"),
        *("enqueued", "dequeued"),
    ),
    "pull_request_review": ("submitted", "edited", "dismissed"),
    "pull_request_review_comment": _ISSUE_LIKE,
    "pull_request_review_thread": ("resolved", "unresolved"),
    "push": (),
    "registry_package": ("published", "updated"),
    "release": ("published", "unpublished", "created", "edited", "deleted", "prereleased", "released"),
    "repository_dispatch": (),
    "secret_scanning_alert": ("created", "reopened", "resolved", "validated", "publicly_leaked"),
    "status": (),
    "sub_issues": ("sub_issue_added", "sub_issue_removed", "parent_issue_added", "parent_issue_removed"),
    "watch": ("started",),
    "workflow_dispatch": (),
    "workflow_job": ("queued", "in_progress", "completed", "waiting"),
    "workflow_run": ("requested", "in_progress", "completed"),
}


def _strings(description: str, **extra: Any) -> dict[str, Any]:
    items: dict[str, Any] = {"type": "string", **extra}
    return {
        "description": description,
        "oneOf": [items, {"type": "array", "items": items, "uniqueItems": True}],
    }


def _filters_def() -> dict[str, Any]:
    """Filters every GitHub event accepts; `types` is added per event."""
    return {
        "type": "object",
        "properties": {
            "labels": _strings("Only when the issue or pull request has one of these labels."),
            "branches": _strings("Only for these branches (glob patterns)."),
            "branches-ignore": _strings("Not for these branches (as Actions; not with `branches`)."),
            "tags": _strings("push only: only for these tags (glob patterns); with no `branches`, not for branches."),
            "tags-ignore": _strings("push only: not for these tags (as Actions; not with `tags`)."),
            "paths": _strings("Only when a changed file matches one of these glob patterns."),
            "paths-ignore": _strings("Not when every changed file matches these (as Actions; not with `paths`)."),
            "mention": {"type": "string", "minLength": 1, "description": "Only when the text mentions this."},
            "author_association": _strings("Only for authors with these associations.", enum=list(AUTHOR_ASSOCIATIONS)),
            "draft": {"type": "boolean", "description": "Only draft (true) or only non-draft (false) pull requests."},
            "forks": {"type": "boolean", "description": "Whether pull requests from forks fire the routine."},
            "authors": _strings("Only for these GitHub logins."),
        },
        "not": {
            "anyOf": [
                {"required": ["paths", "paths-ignore"]},
                {"required": ["branches", "branches-ignore"]},
                {"required": ["tags", "tags-ignore"]},
            ]
        },
    }


def _event_schema(event: str, types: tuple[str, ...]) -> dict[str, Any]:
    config: dict[str, Any] = {"$ref": "#/$defs/filters", "unevaluatedProperties": False}
    if types:
        config["properties"] = {"types": _strings("Activity types that fire the routine.", enum=list(types))}
    return {
        "description": f"The GitHub `{event}` webhook event, with optional filters.",
        "oneOf": [{"type": "null"}, config],
    }


def _on_schema() -> dict[str, Any]:
    schedule_item = {
        "type": "object",
        "additionalProperties": False,
        "required": ["cron"],
        "properties": {
            "cron": {"type": "string", "description": "Five-field cron expression; H picks a stable hashed value."},
            "timezone": {"type": "string", "description": "IANA time zone, e.g. Europe/Berlin (default UTC)."},
        },
    }
    events = {name: _event_schema(name, types) for name, types in GITHUB_EVENTS.items()}
    return {
        "type": "object",
        "description": "What fires the routine. Without `on:` only the API does; with it, only what is listed.",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "schedule": {"type": "array", "minItems": 1, "items": schedule_item, "description": "Cron schedules."},
            "api": {"type": "boolean", "description": "POST /api/routines/<name>/fire with the routine's token."},
            "github": {
                "type": "object",
                "description": "GitHub webhook events and their filters.",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": events,
            },
        },
    }


def _policy_properties() -> dict[str, Any]:
    secret = {"type": "string", "pattern": SECRET_PATTERN}
    positive = {"type": "number", "exclusiveMinimum": 0}
    return {
        "tools": {
            "type": "array",
            "uniqueItems": True,
            "items": {"enum": list(TOOLS)},
            "description": "Claude Code–style tools the agent may use (default: bash, edit).",
        },
        "network": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "allow": {
                    "type": "array",
                    "uniqueItems": True,
                    "items": {"type": "string", "pattern": HOST_PATTERN},
                    "description": "Host names the sandbox may reach; `*.example.com` for subdomains. No schemes.",
                },
                "defaults": {
                    "type": "boolean",
                    "description": "Also allow the package registries (PyPI, npm, Go, crates, …); default true.",
                },
            },
        },
        "secrets": {
            "type": "array",
            "uniqueItems": True,
            "items": secret,
            "description": "Vault secret names; the sandbox sees placeholders, the egress proxy swaps them.",
        },
        "connectors": {
            "type": "object",
            "description": "MCP connectors by name.",
            "propertyNames": {"pattern": CONNECTOR_NAME_PATTERN},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["url"],
                "properties": {
                    "url": {"type": "string", "pattern": "^https?://", "description": "The connector's URL."},
                    "secret": {**secret, "description": "Vault secret sent to the connector."},
                },
            },
        },
        "permissions": {
            "type": "object",
            "description": "Scope of the run's GitHub token (default: contents, pull_requests write; metadata read).",
            "propertyNames": {"enum": list(PERMISSIONS)},
            "additionalProperties": {"enum": ["read", "write"]},
        },
        "outputs": {
            "type": "object",
            "description": "What a run may write (default: a draft pull request).",
            "additionalProperties": False,
            "properties": {
                "pull_request": {
                    "description": "Open a draft pull request. Runs never open ready-for-review pull requests.",
                    "oneOf": [
                        {"type": "boolean"},
                        {"type": "object", "additionalProperties": False, "properties": {"draft": {"const": True}}},
                    ],
                },
                "review": {"type": "boolean", "description": "Review the pull request that fired the run."},
                "comment": {"type": "boolean", "description": "Comment on the issue or pull request that fired it."},
                "issue": {"type": "boolean", "description": "Open an issue with the run's report."},
                "notify": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^slack:[A-Z][A-Z0-9_]*$"},
                    "description": "Notifications, e.g. slack:ENG_WEBHOOK (a vault secret holding the webhook URL).",
                },
            },
        },
        "limits": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_turns": {"type": "integer", "minimum": 1, "description": "Model turns (default 60)."},
                "max_minutes": {**positive, "description": "Wall-clock minutes (default 30)."},
                "max_cost_usd": {**positive, "description": "Model cost in US dollars (default 5)."},
                "runs_per_day": {"type": "integer", "minimum": 1, "description": "Runs started per day."},
            },
        },
        "concurrency": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "group": {
                    "type": "string",
                    "description": "Runs sharing a group run one at a time; {{ repo }}, {{ routine }}.",
                },
                "cancel_in_progress": {"type": "boolean", "description": "A new run cancels the running one."},
            },
        },
        "environment": {
            "description": "The sandbox's root and how to make it ready (docs/routines.md#environment).",
            "oneOf": [
                {"const": "devcontainer", "description": "The repository's .devcontainer/devcontainer.json."},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "minProperties": 1,
                    "properties": {
                        "image": {
                            "type": "string",
                            "maxLength": 255,
                            "pattern": IMAGE_PATTERN,
                            "description": "An OCI image reference: node:22-bookworm, ghcr.io/acme/dev:1@sha256:….",
                        },
                        "setup": _strings("Shell commands run in the sandbox before the agent's first turn."),
                        "cache": _strings("Repository files whose contents key the saved result of setup."),
                        "env": {
                            "type": "object",
                            "propertyNames": {"pattern": ENV_NAME},
                            "additionalProperties": {"type": "string"},
                            "description": "Variables set in the sandbox.",
                        },
                        "credentials": {
                            "type": "string",
                            "pattern": SECRET_PATTERN,
                            "description": "Vault secret that logs in to the image's registry.",
                        },
                    },
                },
            ],
        },
    }


def build_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a routine file's front matter."""
    repo_one = {"type": "string", "minLength": 1}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/routines/routines/routine.schema.json",
        "title": "Routine front matter",
        "description": "YAML front matter of a routine file; the Markdown body below it is the prompt.",
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "repo"],
        "$defs": {"filters": _filters_def()},
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN, "description": "Unique name; used in branch names."},
            "description": {"type": "string", "description": "One line shown in lists."},
            "repo": {
                "description": "owner/name, a local path (/abs or ./rel), '*' or a list of owner/name.",
                "oneOf": [
                    repo_one,
                    {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"pattern": OWNER_NAME_PATTERN}},
                ],
            },
            "base": {"type": "string", "minLength": 1, "description": "Base branch (default: the repo's default)."},
            "on": _on_schema(),
            "model": {"type": "string", "pattern": "^claude-", "description": "Claude model id."},
            **_policy_properties(),
        },
    }


if __name__ == "__main__":
    print(json.dumps(build_schema(), indent=2, ensure_ascii=False))
