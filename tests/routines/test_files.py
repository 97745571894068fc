"""Routine files: the examples load, wrong files are refused at the right line with a fix, the schema agrees."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from app.core.domain import Concurrency, Connector, Limits, Routine, Schedule
from app.core.errors import ConfigError, RoutineFileError
from app.routines.files import load_routine, load_routines, parse_routine, render_group, schema, validate_folder
from app.routines.reader import Loader
from app.routines.schema import GITHUB_EVENTS, TOP_KEYS, build_schema
from tests.support.paths import EXAMPLE_ROUTINES

EXAMPLES = EXAMPLE_ROUTINES
EXAMPLE_NAMES = [
    "nightly-bugfix",
    "weekly-dependency-audit",
    "pr-review",
    "issue-fix",
    "weekly-security-report",
    "fix-flaky",
]

DESIGN_EXAMPLE = """\
---
name: nightly-bugfix
description: Fix the highest-priority open bug overnight
repo: acme/api                 # owner/name on an installation; or a local path in local mode
base: main                     # optional, default: the repo's default branch
on:
  schedule:
    - cron: "0 2 * * *"
      timezone: Europe/Berlin
  api: true                    # POST /api/routines/nightly-bugfix/fire  (Bearer <routine token>)
  github:
    issues: {types: [labeled], labels: [routine:fix]}
    issue_comment: {types: [created], mention: "@routines", author_association: [OWNER, MEMBER, COLLABORATOR]}
model: claude-sonnet-4-5
tools: [bash, edit, web_fetch]           # Claude Code–style tools the agent may use
network: {allow: [sentry.io, "*.sentry.io"]}
secrets: [SENTRY_AUTH_TOKEN]             # vault names; the sandbox sees placeholders
connectors: {linear: {url: "https://mcp.linear.app/mcp", secret: LINEAR_TOKEN}}
permissions: {contents: write, pull_requests: write, issues: read}   # scope of the run's GitHub token
outputs: {pull_request: {draft: true}, comment: true, notify: [slack:ENG_TRIAGE_WEBHOOK]}
limits: {max_turns: 60, max_minutes: 30, max_cost_usd: 5, runs_per_day: 5}
concurrency: {group: "{{ repo }}", cancel_in_progress: false}
---
Pull the highest-priority open bug, reproduce it, fix it with a test, and summarise.
"""


def routine_text(front: str, body: str = "Do the thing.") -> str:
    """A file whose front matter is `name` and `repo` (lines 2–3) followed by `front` from line 4."""
    return f"---\nname: demo\nrepo: acme/api\n{front}---\n{body}\n"


def front_matter(path: Path) -> object:
    text = path.read_text(encoding="utf-8")
    return yaml.load(text.split("---\n")[1], Loader=Loader)


def test_every_example_loads() -> None:
    routines = load_routines(EXAMPLES)

    assert sorted(routines) == sorted(EXAMPLE_NAMES)
    assert validate_folder(EXAMPLES) == []
    nightly = routines["nightly-bugfix"]
    assert nightly.on.schedule == (Schedule(cron="0 2 * * *", timezone="Europe/Berlin"),)
    assert nightly.on.api is True
    assert nightly.on.github == {"issues": {"types": ["labeled"], "labels": ["routine:fix"]}}
    assert nightly.prompt.startswith("Pick the highest-priority open issue")
    assert nightly.source == str(EXAMPLES / "nightly-bugfix.md")
    assert routines["weekly-security-report"].permissions == {"issues": "write", "contents": "read"}
    assert routines["weekly-security-report"].tools == ("bash",)
    assert routines["pr-review"].on.api is False
    assert routines["pr-review"].outputs == {"review": True}


def test_the_design_example_reads_every_field() -> None:
    routine = parse_routine(DESIGN_EXAMPLE, "design.md")

    assert routine.name == "nightly-bugfix"
    assert routine.repo == "acme/api"
    assert routine.base == "main"
    assert routine.on.github["issue_comment"] == {
        "types": ["created"],
        "mention": "@routines",
        "author_association": ["OWNER", "MEMBER", "COLLABORATOR"],
    }
    assert routine.tools == ("bash", "edit", "web_fetch")
    assert routine.network_allow == ("sentry.io", "*.sentry.io")
    assert routine.secrets == ("SENTRY_AUTH_TOKEN",)
    assert routine.connectors == (Connector("linear", "https://mcp.linear.app/mcp", "LINEAR_TOKEN"),)
    assert routine.permissions == {"contents": "write", "pull_requests": "write", "issues": "read"}
    assert routine.outputs == {"pull_request": {"draft": True}, "comment": True, "notify": ["slack:ENG_TRIAGE_WEBHOOK"]}
    assert routine.limits == Limits(max_turns=60, max_minutes=30.0, max_cost_usd=5.0, runs_per_day=5)
    assert routine.concurrency == Concurrency(group="{{ repo }}", cancel_in_progress=False)
    assert routine.prompt == "Pull the highest-priority open bug, reproduce it, fix it with a test, and summarise."


def test_absent_fields_take_the_domain_defaults() -> None:
    routine = parse_routine(routine_text(""), "min.md")

    defaults = Routine(name="demo", repo="acme/api", prompt="Do the thing.", source="min.md")
    assert routine == defaults
    assert routine.on.api is True and routine.on.schedule == () and routine.on.github == {}


def test_on_is_a_key_not_a_boolean() -> None:
    routine = parse_routine(routine_text("on:\n  schedule:\n    - cron: '0 3 * * 1'\n"), "on.md")

    assert routine.on.schedule == (Schedule(cron="0 3 * * 1"),)
    assert routine.on.api is False, "with on:, only the triggers it lists fire"
    assert yaml.load("on: 1\noff: 2\nyes: 3\nok: true", Loader=Loader) == {"on": 1, "off": 2, "yes": 3, "ok": True}


def test_repo_forms() -> None:
    assert parse_routine(routine_text("").replace("acme/api", "[acme/api, acme/web]"), "x.md").repos == (
        "acme/api",
        "acme/web",
    )
    for repo in ("'*'", "/srv/git/api", "./api"):
        assert parse_routine(routine_text("").replace("acme/api", repo), "x.md").repo == repo.strip("'")


def test_github_event_without_filters_and_hashed_cron() -> None:
    text = routine_text("on:\n  github:\n    push:\n  schedule:\n    - cron: 'H 4 * * *'\n")
    routine = parse_routine(text, "x.md")

    assert routine.on.github == {"push": {}}
    assert routine.on.schedule[0].cron == "H 4 * * *"


def test_minimum_interval_is_a_parameter() -> None:
    hourly = routine_text("on:\n  schedule:\n    - cron: '0 * * * *'\n")
    assert parse_routine(hourly, "x.md").on.schedule[0].cron == "0 * * * *"
    with pytest.raises(RoutineFileError, match="fires every 1 hour; the minimum interval is 2 hours"):
        parse_routine(hourly, "x.md", min_interval_s=7200)
    fast = hourly.replace("0 * * * *", "*/5 * * * *")
    assert parse_routine(fast, "x.md", min_interval_s=300).on.schedule[0].cron == "*/5 * * * *"


BAD = [
    ("no-front-matter", "name: demo\nrepo: acme/api\n\nDo it.\n", 1, "no front matter — start the file with a '---'"),
    ("unterminated", "---\nname: demo\nrepo: acme/api\nDo it.\n", 1, "never closed — add a '---' line"),
    ("yaml-syntax", routine_text("description: fix: things\n"), 4, "invalid YAML: mapping values are not allowed"),
    ("yaml-tab", routine_text("on:\n\tapi: true\n"), 5, "invalid YAML"),
    ("missing-name", "---\nrepo: acme/api\n---\nDo it.\n", 2, "no 'name' — add `name: nightly-bugfix`"),
    ("missing-repo", "---\nname: demo\n---\nDo it.\n", 2, "no 'repo' — add `repo: acme/api`"),
    ("empty-body", routine_text("", body="\n   \n"), 4, "the prompt is empty — write what the routine should do"),
    ("unknown-key", routine_text("on:\n  shedule: []\n"), 5, "unknown key 'shedule' in on — did you mean 'schedule'?"),
    ("misplaced-key", routine_text("schedule: []\n"), 4, "key 'schedule' belongs under on: — move it there"),
    ("duplicate-key", routine_text("tools: [bash]\ntools: [edit]\n"), 5, "appears twice (first on line 4)"),
    ("bad-name", "---\nname: Nightly Bugfix\nrepo: acme/api\n---\nx\n", 2, "lowercase letters, digits and '-'"),
    ("bad-repo", routine_text("").replace("acme/api", "acme"), 3, "neither owner/name nor a local path"),
    ("repo-list-item", routine_text("").replace("acme/api", "[acme/api, 'web']"), 3, "'web' in the list is not owner"),
    ("wrong-type", routine_text("tools: bash\n"), 4, "tools must be a list, not a string — write"),
    ("bad-cron", routine_text("on:\n  schedule:\n    - cron: '0 25 * * *'\n"), 6, "not a valid cron expression"),
    ("cron-fields", routine_text("on:\n  schedule:\n    - cron: '0 0 2 * * *'\n"), 6, "has 6 fields — use five"),
    ("cron-too-often", routine_text("on:\n  schedule:\n    - cron: '*/5 * * * *'\n"), 6, "fires every 5 minutes;"),
    ("cron-never", routine_text("on:\n  schedule:\n    - cron: '0 0 30 2 *'\n"), 6, "never fires"),
    ("no-cron", routine_text("on:\n  schedule:\n    - timezone: UTC\n"), 6, "a schedule has no cron — add cron:"),
    (
        "timezone",
        routine_text("on:\n  schedule:\n    - cron: '0 2 * * *'\n      timezone: Europe/Berln\n"),
        7,
        "unknown timezone 'Europe/Berln' — did you mean 'Europe/Berlin'?",
    ),
    ("event", routine_text("on:\n  github:\n    pull_requests: {}\n"), 6, "did you mean 'pull_request'?"),
    ("schedule-event", routine_text("on:\n  github:\n    schedule: {}\n"), 6, "'schedule' is not a GitHub event"),
    (
        "event-type",
        routine_text("on:\n  github:\n    pull_request:\n      types: [opened, synchronized]\n"),
        7,
        "unknown type 'synchronized' — did you mean 'synchronize'?",
    ),
    ("push-types", routine_text("on:\n  github:\n    push: {types: [created]}\n"), 6, "has no activity types"),
    (
        "ignore-and-paths",
        routine_text("on:\n  github:\n    push:\n      paths: [src/**]\n      paths-ignore: [docs/**]\n"),
        8,
        "paths and paths-ignore cannot both be set",
    ),
    ("event-filter", routine_text("on:\n  github:\n    issues: {label: [bug]}\n"), 6, "did you mean 'labels'?"),
    (
        "association",
        routine_text("on:\n  github:\n    issue_comment:\n      author_association: [OWNER, ADMIN]\n"),
        7,
        "unknown author_association 'ADMIN'",
    ),
    ("no-trigger", routine_text("on:\n  api: false\n"), 5, "on: enables no trigger"),
    ("api-yes", routine_text("on: {api: yes}\n"), 4, "on.api must be true or false"),
    ("tool", routine_text("tools: [bash, browser]\n"), 4, "unknown tool 'browser'"),
    ("scheme", routine_text("network:\n  allow:\n    - https://sentry.io\n"), 6, "write the host only: sentry.io"),
    ("path", routine_text("network: {allow: [sentry.io/api]}\n"), 4, "is not a host name — write the host only"),
    ("wildcard-all", routine_text("network: {allow: ['*']}\n"), 4, "'*' is not a host name"),
    ("secret", routine_text("secrets: [sentry-token]\n"), 4, "not a secret name — use capitals, digits and '_'"),
    ("connector-url", routine_text("connectors:\n  linear: {url: 'ftp://x.io'}\n"), 5, "not an http(s) URL"),
    ("connector-secret", routine_text("connectors:\n  l: {url: 'https://x.io', secret: tok}\n"), 5, "secret 'tok'"),
    ("permission-name", routine_text("permissions: {content: write}\n"), 4, "did you mean 'contents'?"),
    ("permission-admin", routine_text("permissions:\n  contents: admin\n"), 5, "'admin' for contents is not allowed"),
    ("permission-output", routine_text("permissions: {contents: read}\n"), 4, "lack contents: write (for outputs.pul"),
    (
        "not-draft",
        routine_text("outputs:\n  pull_request:\n    draft: false\n"),
        6,
        "runs only open draft pull requests",
    ),
    ("notify", routine_text("outputs: {notify: [email:ME]}\n"), 4, "is not slack:SECRET"),
    ("max-turns", routine_text("limits:\n  max_turns: 0\n"), 5, "limits.max_turns is 0; it must be at least 1"),
    ("max-cost", routine_text("limits: {max_cost_usd: '5'}\n"), 4, "max_cost_usd must be a number, not a string"),
    ("group", routine_text("concurrency: {group: '{{ branch }}'}\n"), 4, "unknown {{ branch }} — use {{ repo }}"),
    ("cancel", routine_text("concurrency:\n  cancel_in_progress: 1\n"), 5, "must be true or false, not a number"),
    ("model", routine_text("model: gpt-4o\n"), 4, "not a Claude model"),
    ("base", routine_text("base: 'feature..x'\n"), 4, "is not a branch name"),
]


@pytest.mark.parametrize(("text", "line", "phrase"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_a_wrong_file_is_refused_at_its_line_with_a_fix(tmp_path: Path, text: str, line: int, phrase: str) -> None:
    path = tmp_path / "bad.md"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(RoutineFileError) as caught:
        load_routine(path)

    assert caught.value.line == line, str(caught.value)
    assert phrase in caught.value.message
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert " — " in caught.value.message or "did you mean" in caught.value.message


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(routine_text(""), encoding="utf-8")
    (tmp_path / "b.md").write_text("---\ndescription: copy\nname: demo\nrepo: acme/web\n---\nx\n", encoding="utf-8")

    with pytest.raises(RoutineFileError) as caught:
        load_routines(tmp_path)

    assert (
        str(caught.value) == f"{tmp_path / 'b.md'}:3: name 'demo' is already used by {tmp_path / 'a.md'} — rename one"
    )


def test_validate_folder_reports_every_wrong_file(tmp_path: Path) -> None:
    (tmp_path / "good.md").write_text(routine_text(""), encoding="utf-8")
    (tmp_path / "one.md").write_text(routine_text("tools: [bash, browser]\n"), encoding="utf-8")
    (tmp_path / "two.md").write_text(routine_text("model: gpt-4o\n"), encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a routine", encoding="utf-8")

    errors = validate_folder(tmp_path)

    assert [(Path(e.path).name, e.line) for e in errors] == [("one.md", 4), ("two.md", 4)]
    with pytest.raises(ConfigError, match="does not exist"):
        validate_folder(tmp_path / "missing")


def test_render_group() -> None:
    routine = parse_routine(routine_text(""), "x.md")

    assert render_group("{{ repo }}", routine, "acme/api") == "acme/api"
    assert render_group("{{routine}}:{{ repo }}", routine, "acme/web") == "demo:acme/web"
    assert render_group("fixed", routine, "acme/api") == "fixed"


def test_the_schema_is_valid_shipped_and_accepts_the_examples() -> None:
    shipped = schema()
    jsonschema.Draft202012Validator.check_schema(shipped)
    assert shipped == build_schema(), "regenerate: python -m app.routines.schema > app/routines/routine.schema.json"
    assert set(shipped["properties"]) == set(TOP_KEYS)
    assert set(shipped["properties"]["on"]["properties"]["github"]["properties"]) == set(GITHUB_EVENTS)

    validator = jsonschema.Draft202012Validator(shipped)
    for path in sorted(EXAMPLES.glob("*.md")):
        errors = [e.message for e in validator.iter_errors(front_matter(path))]
        assert errors == [], path.name
    design = yaml.load(DESIGN_EXAMPLE.split("---\n")[1], Loader=Loader)
    assert list(validator.iter_errors(design)) == []


@pytest.mark.parametrize(
    "front",
    [
        {"name": "demo", "repo": "acme/api", "shedule": []},
        {"name": "Demo", "repo": "acme/api"},
        {"name": "demo"},
        {"name": "demo", "repo": "acme/api", "on": {"github": {"issues": {"types": ["labelled"]}}}},
        {"name": "demo", "repo": "acme/api", "on": {"github": {"push": {"lables": ["x"]}}}},
        {"name": "demo", "repo": "acme/api", "on": {"github": {"push": {"branches": ["a"], "branches-ignore": ["b"]}}}},
        {"name": "demo", "repo": "acme/api", "outputs": {"pull_request": {"draft": False}}},
        {"name": "demo", "repo": "acme/api", "permissions": {"contents": "admin"}},
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(front: dict[str, object]) -> None:
    assert list(jsonschema.Draft202012Validator(schema()).iter_errors(json.loads(json.dumps(front)))) != []
