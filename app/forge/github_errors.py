"""Turn GitHub's refusals into messages that name the thing and the fix, with no secret in them."""

from __future__ import annotations

import re
from typing import Any

LEVELS = {"read": 1, "write": 2, "admin": 3}
APP_ACTIONS = ("find the App installation", "create an installation token")
_SECRETS = re.compile(
    r"gh[opsur]_[A-Za-z0-9_-]+"  # GitHub tokens
    r"|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"  # JWTs
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
    re.DOTALL,
)


def redact(message: str) -> str:
    """`message` with anything shaped like a GitHub token, a JWT or a private key replaced."""
    return _SECRETS.sub("<redacted>", message)


def github_message(body: dict[str, Any]) -> str:
    """GitHub's `message` and the messages of its `errors`, as one line."""
    parts = [str(body.get("message") or "no message")]
    for error in body.get("errors") or []:
        if isinstance(error, dict):
            parts.append(str(error.get("message") or f"{error.get('field')} is {error.get('code')}"))
        else:
            parts.append(str(error))
    return ": ".join(parts)


def describe_failure(
    action: str,
    repo: str,
    status: int,
    body: dict[str, Any],
    *,
    requested: dict[str, str] | None = None,
    granted: dict[str, str] | None = None,
) -> str:
    """The ForgeError message for GitHub answering `status` with `body` when trying `action` on `repo`."""
    said = github_message(body)
    if action == APP_ACTIONS[0] and status == 404:
        return f"the GitHub App is not installed on {repo}; install it from the App's page and give it access to {repo}"
    if action in APP_ACTIONS and status == 401:
        return (
            f"GitHub refused the App's JWT ({said}); check that GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY "
            "belong to the same App and that this machine's clock is right"
        )
    if action == APP_ACTIONS[1]:
        return _token_refusal(repo, status, said, requested or {}, granted)
    if status == 401:
        return f"the installation token for {repo} was refused ({said}); it expired or was revoked, request a new one"
    if status == 403 and "rate limit" in said.lower():
        return f"GitHub's rate limit stopped the request to {action} on {repo}; wait for the limit to reset"
    if status == 403:
        return (
            f"GitHub refused to {action} on {repo} ({said}); the token lacks a permission: add it to the "
            "routine's `permissions:` and to the GitHub App's permissions"
        )
    if status == 404:
        return (
            f"cannot {action}: {repo} was not found or the App cannot see it; check the name and the App installation"
        )
    if status == 422:
        return f"GitHub refused to {action} on {repo} ({said}){_hint_422(said)}"
    if status >= 500:
        return f"GitHub failed ({status}) to {action} on {repo} ({said}); retry later"
    return f"GitHub answered {status} when trying to {action} on {repo} ({said})"


def _token_refusal(repo: str, status: int, said: str, requested: dict[str, str], granted: dict[str, str] | None) -> str:
    if status == 404:
        return f"installation token request refused: the App installation for {repo} is gone; reinstall the App"
    if status != 422:
        return f"installation token request for {repo} failed with {status} ({said})"
    if "permission" in said.lower():
        missing = [
            f"{name}={level}"
            for name, level in requested.items()
            if granted is None or LEVELS.get(granted.get(name, ""), 0) < LEVELS.get(level, 9)
        ]
        named = ", ".join(missing) or "one of the requested permissions"
        verb = "are" if len(missing) > 1 else "is"
        return (
            f"installation token request refused: permission {named} {verb} not granted to the App; "
            "add it in the App settings and accept it on the installation"
        )
    return (
        f"installation token request refused: {repo} is not among the repositories the App installation can "
        "access; add it in the installation's repository access settings"
    )


def _hint_422(said: str) -> str:
    lowered = said.lower()
    if "already exists" in lowered:
        return "; a pull request for this branch is already open: look it up instead of opening another"
    if "no commits between" in lowered:
        return "; the branch has no new commits: push the work first"
    if "head is invalid" in lowered:
        return "; the head branch does not exist: push it before opening the pull request"
    if "base is invalid" in lowered:
        return "; the base branch does not exist: check the routine's `base:`"
    return ""
