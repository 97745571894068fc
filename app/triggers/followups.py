"""Review feedback on a run's own draft PR becomes a follow-up run on the same branch and PR.

A review (`pull_request_review.submitted`) or a review comment (`pull_request_review_comment.created`)
on a pull request whose head is `routines/<routine>/<run>` continues that run's conversation when a
trusted person (OWNER, MEMBER, COLLABORATOR — not a bot) mentions `@routines`. A branch name is
only a claim: the pull request must be in one of the routine's repositories and its head in that
same repository (never a fork); the worker then checks that the named run is that routine's, on
that repository (`refusal`), before anything runs. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from app.core.domain import JSON, Routine, Run, Trigger

MENTION = re.compile(r"(?<![\w@-])@routines\b", re.IGNORECASE)
TRUSTED = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})
EVENTS = {"pull_request_review": "submitted", "pull_request_review_comment": "created"}
BRANCH = re.compile(r"^routines/(?P<routine>[a-z0-9][a-z0-9-]{0,62})/(?P<run>[0-9a-f]{8,64})$")


@dataclass(frozen=True)
class FollowUp:
    routine: Routine
    repo: str
    branch: str
    parent_run: str
    number: int
    untrusted: str | None = None
    """Why the pull request cannot be one of the routine's own (a fork, another repository), if so."""


def follow_up(event: str, payload: JSON, routines: Mapping[str, Routine]) -> FollowUp | None:
    """The follow-up this event asks for, or None when it is not feedback on one of our draft PRs."""
    if EVENTS.get(event) != payload.get("action"):
        return None
    pull, said = payload.get("pull_request"), payload.get("review" if event == "pull_request_review" else "comment")
    repo = (payload.get("repository") or {}).get("full_name")
    if not isinstance(pull, dict) or not isinstance(said, dict) or not isinstance(repo, str):
        return None
    found = BRANCH.match(str((pull.get("head") or {}).get("ref") or ""))
    routine = routines.get(found["routine"]) if found else None
    sender = payload.get("sender") or {}
    if found is None or routine is None or sender.get("type") == "Bot":
        return None
    if said.get("author_association") not in TRUSTED or not MENTION.search(str(said.get("body") or "")):
        return None
    number = pull.get("number")
    if not isinstance(number, int):
        return None
    return FollowUp(routine, repo, found.string, found["run"], number, _untrusted(routine, repo, pull))


def _untrusted(routine: Routine, repo: str, pull: JSON) -> str | None:
    """Why this pull request cannot be one the routine opened, from the payload alone (None: it can be)."""
    if not any(r == "*" or r.lower() == repo.lower() for r in routine.repos):
        return f"{repo} is not one of routine {routine.name}'s repositories"
    head = ((pull.get("head") or {}).get("repo") or {}).get("full_name")
    base = ((pull.get("base") or {}).get("repo") or {}).get("full_name")
    if not isinstance(head, str) or head.lower() != str(base or repo).lower() or head.lower() != repo.lower():
        return f"its head is in {head or 'a deleted repository'}, not in {repo}: a fork names branches as it likes"
    return None


def refusal(found: FollowUp, parent: Run | None) -> str | None:
    """Why `found` must not run, now that the run its branch names has been looked up (None: it may)."""
    if found.untrusted is not None:
        return found.untrusted
    if parent is None:
        return f"run {found.parent_run} does not exist (or expired)"
    if parent.routine != found.routine.name:
        return f"run {found.parent_run} belongs to routine {parent.routine}, not {found.routine.name}"
    if parent.repo.lower() != found.repo.lower():
        return f"run {found.parent_run} worked on {parent.repo}, not {found.repo}"
    return None


def follow_up_trigger(trigger: Trigger, found: FollowUp) -> Trigger:
    """The event's trigger, marked as a follow-up of `found.parent_run` on its branch."""
    data = {**trigger.data, "follow_up": True, "branch": found.branch, "parent_run": found.parent_run}
    return replace(trigger, data={**data, "number": found.number, "is_pull_request": True})
