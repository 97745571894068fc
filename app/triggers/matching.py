"""Which routines a GitHub event fires: pure functions over routines, the event name and the raw payload.

`on.github` uses GitHub Actions' event names and `types` (the payload's `action`). Filters, all
optional, must all pass:

- `labels`: for `labeled`/`unlabeled`, the label being added or removed; otherwise any label the
  issue or pull request carries.
- `branches`: the base branch for `pull_request*`, the pushed branch for `push`, the head branch
  for `check_suite`/`workflow_run`. `tags` (push only): the pushed tag. As in Actions, a push
  routine with only `branches` ignores tag pushes, one with only `tags` ignores branch pushes, one
  with both takes either. Actions' patterns exactly (app.routines.patterns: `*`, `**`, `?`, `+`,
  `[...]`, `!`, `\\`).
- `paths`: for `push`, the commits' added/modified/removed files (not applied to tag pushes, as
  in Actions). A pull request's payload does
  not list its files: the match carries the patterns (`Match.paths`) and the worker applies them
  to the files GitHub lists for the pull request (`paths_match`), before firing.
- In `branches` and `paths`, a pattern starting with `!` excludes what it matches; later patterns
  win over earlier ones, as in Actions (`[docs/**, "!docs/internal/**"]`).
- `draft`: only draft (true) or only ready (false) pull requests.
- `forks`: pull requests from forks (head repository != base repository) fire only with
  `forks: true`. The same holds for CI events (`workflow_run`, `check_suite`, `check_run`)
  whose head is in a fork: GitHub names a fork's branch as it likes, so `branches` alone
  must not let a fork's `main` through.
- `authors`: the sender's login (for `workflow_run`, the actor who triggered the run). A Bot
  never fires a routine unless `authors` names it.
- Who may fire, unless the routine says otherwise (`authors`, or an explicit `author_association`):
  for issues, comments, reviews and CI events, the match carries the actor (`Match.actor`) and the
  worker fires only if GitHub says that login has write access to the repository (`admin`,
  `maintain` or `write`; `triage` too when they act on someone else's issue or pull request,
  e.g. label it). `author_association` is only a first, free filter: MEMBER and COLLABORATOR
  include people with read access.
- `author_association`: of the object the sender wrote (comment, review, or the issue/PR they
  opened or edited). Defaults to OWNER, MEMBER, COLLABORATOR for issues and comments. When
  someone acts on another person's issue (labels it, assigns it), GitHub already required
  triage or write access, so the issue author's association does not apply.
- `mention`: the text, as a word, case-insensitive, in the comment, review or issue/PR body.

`pull_request` without `types` fires on opened, synchronize and reopened, like Actions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.core.domain import JSON, Routine, Trigger
from app.routines.patterns import any_selected, selected
from app.triggers.event_text import clean, render

TRUSTED_ASSOCIATIONS = ("OWNER", "MEMBER", "COLLABORATOR")
CI_EVENTS = frozenset({"workflow_run", "check_suite", "check_run"})
WRITE_ACCESS = frozenset({"admin", "maintain", "write"})
TRIAGE_ACCESS = WRITE_ACCESS | {"triage"}
ASSOCIATION_DEFAULT_EVENTS = frozenset(
    {"issues", "issue_comment", "pull_request_review", "pull_request_review_comment", "discussion",
     "discussion_comment", "commit_comment"}
)  # fmt: skip
DEFAULT_TYPES = {"pull_request": ("opened", "synchronize", "reopened")}
_PULL_EVENTS = ("pull_request", "pull_request_review", "pull_request_review_comment")


@dataclass(frozen=True)
class Match:
    """`routine` fires for this event on `repo` (the event's repository); `notes` say what was skipped."""

    routine: Routine
    repo: str
    notes: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()  # still to apply to the pull request's changed files
    actor: str | None = None  # a login still to be shown to hold one of `access` on the repository
    access: frozenset[str] = WRITE_ACCESS


def github_trigger(event: str, payload: JSON, delivery: str) -> Trigger:
    """The Trigger of a run fired by this event: the rendered, fenced text and the ids an acknowledgement needs."""
    subject = _subject(payload) or {}
    comment = payload.get("comment") if isinstance(payload.get("comment"), dict) else None
    data: JSON = {
        "event": event,
        "action": payload.get("action"),
        "delivery": delivery,
        "repo": event_repo(payload),
        "number": subject.get("number"),
        "url": (comment or subject).get("html_url"),
        "installation_id": (payload.get("installation") or {}).get("id"),
        "is_pull_request": "pull_request" in payload or "pull_request" in subject,
    }
    if comment is not None:
        data["comment_id"] = comment.get("id")
    label = (payload.get("label") or {}).get("name")
    if label:
        data["label"] = clean(str(label))[:200]
    sender = clean(str((payload.get("sender") or {}).get("login") or "")) or None
    return Trigger(kind="github", text=render(event, payload, delivery), actor=sender, data=data)


def event_repo(payload: JSON) -> str | None:
    """The `owner/name` of the event's repository, or None (App-level events)."""
    repository = payload.get("repository")
    name = repository.get("full_name") if isinstance(repository, dict) else None
    return name if isinstance(name, str) and name else None


def match(routines: Iterable[Routine], event: str, payload: JSON) -> list[Match]:
    """The routines `event` with `payload` fires, in the given order."""
    found = []
    for routine in routines:
        result = check(routine, event, payload)
        if isinstance(result, Match):
            found.append(result)
    return found


def check(routine: Routine, event: str, payload: JSON) -> Match | str:
    """A Match, or why `routine` does not fire (one line, for logs)."""
    if event not in routine.on.github:
        return f"does not listen to {event}"
    repo = event_repo(payload)
    if repo is None:
        return "the event has no repository"
    if not _repo_allowed(routine, repo):
        return f"applies to {', '.join(routine.repos)}, not {repo}"
    filters = routine.on.github[event] or {}
    action = payload.get("action")
    types = filters.get("types") or DEFAULT_TYPES.get(event)
    if types and action not in types:
        return f"action {action!r} is not one of {', '.join(types)}"
    refused = _sender(event, filters, payload) or _association(event, filters, payload)
    refused = refused or _labels(filters, payload) or _ci_head(event, filters, payload)
    refused = refused or _branches(event, filters, payload)
    refused = refused or _pull(event, filters, payload) or _mention(event, filters, payload)
    if refused:
        return refused
    actor, access = _actor_check(event, filters, payload)
    notes: tuple[str, ...] = ()
    paths = tuple(str(p) for p in filters.get("paths") or ())
    if paths and event == "push" and _pushed_tag(payload) is not None:
        pass  # Actions does not evaluate paths for tag pushes
    elif paths and event == "push":
        if not paths_match(paths, _pushed_files(payload)):
            return "no pushed file matches paths"
    elif paths and pull_number(event, payload) is not None:
        return Match(routine, repo, paths=paths, actor=actor, access=access)
    elif paths:
        notes = (f"paths filter not applied to {event}: the event carries no list of changed files",)
    return Match(routine, repo, notes, actor=actor, access=access)


def _actor_check(event: str, filters: JSON, payload: JSON) -> tuple[str | None, frozenset[str]]:
    """The login whose access the worker must still check, and the access levels that may fire."""
    if filters.get("authors"):
        return None, WRITE_ACCESS
    login = str(actor_of(event, payload).get("login") or "")
    if event in CI_EVENTS:
        return login, WRITE_ACCESS
    if event in ASSOCIATION_DEFAULT_EVENTS and filters.get("author_association") is None:
        return login, WRITE_ACCESS if _authored(event, payload) is not None else TRIAGE_ACCESS
    return None, WRITE_ACCESS


def pull_number(event: str, payload: JSON) -> int | None:
    """The pull request a `pull_request*` event is about, or None."""
    number = (payload.get("pull_request") or {}).get("number") if event in _PULL_EVENTS else None
    return number if isinstance(number, int) else None


def paths_match(patterns: Iterable[str], files: Iterable[str]) -> bool:
    """Whether a file is selected by `patterns` (Actions' patterns, app.routines.patterns)."""
    return any_selected(patterns, files)


def _repo_allowed(routine: Routine, repo: str) -> bool:
    wanted = repo.lower()
    return any(r == "*" or r.lower() == wanted for r in routine.repos)


def actor_of(event: str, payload: JSON) -> JSON:
    """Who caused the event: the user who triggered a workflow run, else the sender."""
    if event == "workflow_run" and isinstance(payload.get("workflow_run"), dict):
        run = payload["workflow_run"]
        for key in ("triggering_actor", "actor"):
            if isinstance(run.get(key), dict) and run[key].get("login"):
                return dict(run[key])
    sender = payload.get("sender")
    return dict(sender) if isinstance(sender, dict) else {}


def _sender(event: str, filters: JSON, payload: JSON) -> str | None:
    sender = actor_of(event, payload)
    login = str(sender.get("login") or "")
    authors = filters.get("authors")
    if authors:
        return None if login.lower() in {a.lower() for a in authors} else f"sender {login!r} is not in authors"
    if sender.get("type") == "Bot" or login.endswith("[bot]"):
        return f"sender {login!r} is a bot (name it in authors to allow it)"
    return None


def _association(event: str, filters: JSON, payload: JSON) -> str | None:
    wanted = filters.get("author_association")
    if wanted is None and event not in ASSOCIATION_DEFAULT_EVENTS:
        return None
    written = _authored(event, payload)
    if written is None:
        return None
    association = str(written.get("author_association") or "NONE")
    allowed = wanted or TRUSTED_ASSOCIATIONS
    if association in allowed:
        return None
    return f"author_association {association} is not one of {', '.join(allowed)}"


def _authored(event: str, payload: JSON) -> JSON | None:
    """The object the sender wrote, when this event is about their own words; else None."""
    for key in ("comment", "review"):
        if isinstance(payload.get(key), dict):
            return dict(payload[key])
    subject = _subject(payload)
    sender = (payload.get("sender") or {}).get("login")
    if subject is not None and (subject.get("user") or {}).get("login") == sender:
        return subject
    return None


def _subject(payload: JSON) -> JSON | None:
    """The issue or pull request the event is about."""
    for key in ("pull_request", "issue", "discussion"):
        value = payload.get(key)
        if isinstance(value, dict):
            return value
    return None


def _labels(filters: JSON, payload: JSON) -> str | None:
    wanted = filters.get("labels")
    if not wanted:
        return None
    if payload.get("action") in ("labeled", "unlabeled"):
        names = [str((payload.get("label") or {}).get("name"))]
    else:
        names = [str(label.get("name")) for label in (_subject(payload) or {}).get("labels") or []]
    return None if set(names) & set(wanted) else f"labels {names} do not include {', '.join(wanted)}"


def _branches(event: str, filters: JSON, payload: JSON) -> str | None:
    wanted = filters.get("branches")
    if event == "push":
        return _push_ref(filters, payload)
    if not wanted:
        return None
    branch = event_branch(event, payload)
    if branch is not None and selected(wanted, branch):
        return None
    return f"branch {branch!r} does not match {', '.join(wanted)}"


def _push_ref(filters: JSON, payload: JSON) -> str | None:
    """Actions' rule for a push: each of `branches` and `tags` decides for its kind of ref; a kind the
    routine names no filter for passes only when it names neither."""
    branches, tags = filters.get("branches"), filters.get("tags")
    tag = _pushed_tag(payload)
    if tag is not None:
        if tags is not None:
            return None if selected(tags, tag) else f"tag {tag!r} does not match {', '.join(tags)}"
        return f"tag {tag!r} pushed; the routine filters branches only" if branches is not None else None
    branch = event_branch("push", payload)
    if branches is not None:
        if branch is not None and selected(branches, branch):
            return None
        return f"branch {branch!r} does not match {', '.join(branches)}"
    return f"branch {branch!r} pushed; the routine filters tags only" if tags is not None else None


def _pushed_tag(payload: JSON) -> str | None:
    ref = str(payload.get("ref") or "")
    return ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else None


def event_branch(event: str, payload: JSON) -> str | None:
    """The branch the event concerns (base branch of a pull request), or None."""
    if event == "push":
        ref = str(payload.get("ref") or "")
        return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None
    if event in _PULL_EVENTS:
        return _dig(payload, "pull_request", "base", "ref")
    if event == "check_run":
        return _dig(payload, "check_run", "check_suite", "head_branch")
    for key in ("check_suite", "workflow_run"):
        if isinstance(payload.get(key), dict):
            return _dig(payload, key, "head_branch")
    return None


def _ci_head(event: str, filters: JSON, payload: JSON) -> str | None:
    if event not in CI_EVENTS or filters.get("forks", False):
        return None
    fork = ci_fork(event, payload)
    return f"the {event}'s head is in the fork {fork} (set forks: true to allow)" if fork else None


def ci_fork(event: str, payload: JSON) -> str | None:
    """The fork a CI event's head comes from, or None when it is in the repository itself.

    `workflow_run` names its head repository. For `check_suite`/`check_run`, GitHub leaves
    `head_branch` null (and `pull_requests` empty) when the head is in a fork; a listed pull
    request whose head repository is not its base is a fork too.
    """
    repo = event_repo(payload) or ""
    if event == "workflow_run":
        head = _dig(payload, "workflow_run", "head_repository", "full_name")
        return None if head is not None and head.lower() == repo.lower() else head or "(unknown)"
    check: JSON = payload[event] if isinstance(payload.get(event), dict) else {}
    suite = check.get("check_suite") if event == "check_run" else check
    if not isinstance(suite, dict) or not suite.get("head_branch"):
        return "(not named by GitHub)"
    for pull in check.get("pull_requests") or []:
        head_id = ((pull.get("head") or {}).get("repo") or {}).get("id")
        base_id = ((pull.get("base") or {}).get("repo") or {}).get("id")
        if head_id != base_id:
            return str(((pull.get("head") or {}).get("repo") or {}).get("url") or "(unknown)")
    return None


def _pull(event: str, filters: JSON, payload: JSON) -> str | None:
    pull = payload.get("pull_request")
    if event not in _PULL_EVENTS or not isinstance(pull, dict):
        return None
    if "draft" in filters and bool(pull.get("draft")) != filters["draft"]:
        return "the pull request is a draft" if pull.get("draft") else "the pull request is not a draft"
    head_repo = _dig(pull, "head", "repo", "full_name")
    base_repo = _dig(pull, "base", "repo", "full_name")
    if head_repo != base_repo and not filters.get("forks", False):
        return f"the pull request comes from the fork {head_repo or '(deleted)'} (set forks: true to allow)"
    return None


def _mention(event: str, filters: JSON, payload: JSON) -> str | None:
    mention = filters.get("mention")
    if not mention:
        return None
    body = event_body(payload)
    pattern = re.compile(rf"(?<![\w@/-]){re.escape(mention)}(?![\w-])", re.IGNORECASE)
    return None if pattern.search(body) else f"the text does not mention {mention}"


def event_body(payload: JSON) -> str:
    """The text the sender wrote: the comment, review, or issue/PR body ("" when none)."""
    for key in ("comment", "review"):
        if isinstance(payload.get(key), dict):
            return str(payload[key].get("body") or "")
    return str((_subject(payload) or {}).get("body") or "")


def _pushed_files(payload: JSON) -> set[str]:
    files: set[str] = set()
    for commit in payload.get("commits") or []:
        for key in ("added", "modified", "removed"):
            files.update(str(f) for f in commit.get(key) or [])
    return files


def _dig(data: Any, *keys: str) -> str | None:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data if isinstance(data, str) else None
