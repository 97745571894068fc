"""Review feedback on a run's own draft PR becomes a follow-up run on the same branch and PR.

A review (`pull_request_review.submitted`) or a review comment (`pull_request_review_comment.created`)
on a pull request whose head is `routines/<routine>/<run>` continues that run's conversation when a
trusted person (OWNER, MEMBER, COLLABORATOR — not a bot) mentions `@routines`. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from app.domain import JSON, Routine, Trigger

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
    return FollowUp(routine, repo, found.string, found["run"], number)


def follow_up_trigger(trigger: Trigger, found: FollowUp) -> Trigger:
    """The event's trigger, marked as a follow-up of `found.parent_run` on its branch."""
    data = {**trigger.data, "follow_up": True, "branch": found.branch, "parent_run": found.parent_run}
    return replace(trigger, data={**data, "number": found.number, "is_pull_request": True})
