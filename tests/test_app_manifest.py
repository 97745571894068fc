"""app.yml asks GitHub for exactly what the shipped routines need: their events and their permissions."""

from __future__ import annotations

from typing import Any

import yaml

from app.core.domain import Routine
from app.routines.files import load_routines
from app.triggers.followups import EVENTS as FOLLOW_UP_EVENTS
from tests.support.paths import ROOT

LEVELS = {"read": 1, "write": 2, "admin": 3}
# The permission GitHub requires before an App may subscribe to an event (any of them).
EVENT_PERMISSIONS = {
    "issues": ("issues",),
    "issue_comment": ("issues", "pull_requests"),
    "pull_request": ("pull_requests",),
    "pull_request_review": ("pull_requests",),
    "pull_request_review_comment": ("pull_requests",),
    "push": ("contents",),
    "release": ("contents",),
    "workflow_run": ("actions",),
    "check_suite": ("checks",),
    "check_run": ("checks",),
}


def manifest() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "app.yml").read_text())
    return data


def shipped() -> list[Routine]:
    return list(load_routines(ROOT / "routines").values())


def needed_permissions(routines: list[Routine]) -> dict[str, str]:
    needed = {"metadata": "read"}
    for routine in routines:
        for name, level in routine.permissions.items():
            if LEVELS[level] > LEVELS.get(needed.get(name, ""), 0):
                needed[name] = level
    return needed


def test_every_event_a_routine_listens_to_is_subscribed_and_no_other() -> None:
    wanted = {event for routine in shipped() for event in routine.on.github}
    assert wanted, "the shipped routines should use GitHub events"
    # review feedback on a run's own draft PR starts a follow-up run, whatever the routine listens to
    assert sorted(manifest()["default_events"]) == sorted(wanted | FOLLOW_UP_EVENTS.keys())


def test_the_permissions_are_the_routines_permissions_at_their_highest_level() -> None:
    assert manifest()["default_permissions"] == needed_permissions(shipped())


def test_each_subscribed_event_has_the_permission_github_requires_for_it() -> None:
    permissions = manifest()["default_permissions"]
    for event in manifest()["default_events"]:
        assert any(p in permissions for p in EVENT_PERMISSIONS[event]), (
            f"{event} needs one of {EVENT_PERMISSIONS[event]}"
        )


def test_the_manifest_has_the_fields_githubs_manifest_flow_requires() -> None:
    data = manifest()
    assert data["url"] and data["hook_attributes"]["url"].endswith("/webhooks/github")
    assert data["redirect_url"].endswith("/setup/done") and data["public"] is False
