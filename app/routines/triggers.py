"""The `on:` section of a routine file: cron schedules, the API trigger, GitHub events and their filters."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from croniter import CroniterBadDateError, CroniterError, croniter

from app.core.domain import JSON, Schedule, Triggers
from app.routines.patterns import problem
from app.routines.reader import Entries, Reader, unknown
from app.routines.schema import AUTHOR_ASSOCIATIONS, EVENT_FILTER_KEYS, GITHUB_EVENTS, ON_KEYS, SCHEDULE_KEYS

_CRON_EXAMPLE = '"0 2 * * *" (02:00 every day)'
_SAMPLED_FIRES = 48


def read_on(r: Reader, node: yaml.Node, name: str, min_interval_s: float) -> Triggers:
    """Triggers from the `on:` mapping: only what it lists fires the routine (`api` is off unless `api: true`)."""
    entries = r.mapping(node, "on", ON_KEYS, 'on: {api: true, schedule: [{cron: "0 2 * * *"}]}')
    schedule = _schedules(r, entries["schedule"][1], name, min_interval_s) if "schedule" in entries else ()
    api = r.boolean(entries["api"][1], "on.api") if "api" in entries else False
    github = _github(r, entries["github"][1]) if "github" in entries else {}
    if not (schedule or api or github):
        raise r.error(
            node,
            "on: enables no trigger — add `api: true`, a schedule or a github event "
            "(or remove on: to fire by API only)",
        )
    return Triggers(schedule=schedule, api=api, github=github)


def _schedules(r: Reader, node: yaml.Node, name: str, min_interval_s: float) -> tuple[Schedule, ...]:
    example = '- cron: "0 2 * * *" on the next line, indented'
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise r.type_error(node, "on.schedule", "a list of {cron, timezone}", example)
    schedules = []
    for item in node.value:
        entries = r.mapping(item, "on.schedule", SCHEDULE_KEYS, example)
        if "cron" not in entries:
            raise r.error(item, f"a schedule has no cron — add cron: {_CRON_EXAMPLE}")
        cron_node = entries["cron"][1]
        cron = r.string(cron_node, "cron", f"cron: {_CRON_EXAMPLE}")
        timezone = _timezone(r, entries["timezone"][1]) if "timezone" in entries else "UTC"
        check_cron(r, cron_node, cron, name, min_interval_s)
        schedules.append(Schedule(cron=cron, timezone=timezone))
    return tuple(schedules)


def _timezone(r: Reader, node: yaml.Node) -> str:
    zone = r.string(node, "timezone", "timezone: Europe/Berlin")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise r.error(node, unknown(f"timezone {zone!r}", zone, available_timezones())) from None
    return zone


def hashed(cron: str) -> bool:
    """Whether `cron` has `H` fields (either case, as croniter reads them), which are hashed with the routine's
    name. `@daily` and the like are not: croniter would hash them too when given a name, so it is given none."""
    return not cron.startswith("@") and "h" in cron.lower()


def check_cron(r: Reader, node: yaml.Node, cron: str, name: str, min_interval_s: float) -> None:
    """Refuse a cron that is malformed, never fires, or fires closer together than `min_interval_s`.

    `H` fields are hashed with the routine's name, as the scheduler does (`hash_id=name` when `hashed`).
    """
    fields = cron.split()
    if not cron.startswith("@") and len(fields) != 5:
        raise r.error(
            node,
            f"cron {cron!r} has {len(fields)} fields — use five: minute hour day-of-month month day-of-week, "
            f"e.g. {_CRON_EXAMPLE}",
        )
    hash_id = name if hashed(cron) else None
    if not croniter.is_valid(cron, hash_id=hash_id):
        raise r.error(node, f"cron {cron!r} is not a valid cron expression — use five fields, e.g. {_CRON_EXAMPLE}")
    try:
        it = croniter(cron, datetime(2025, 1, 1), hash_id=hash_id)
        fires = [it.get_next(float) for _ in range(_SAMPLED_FIRES)]
    except CroniterBadDateError:
        raise r.error(node, f"cron {cron!r} never fires — check the day of month and the month") from None
    except CroniterError as exc:
        raise r.error(node, f"cron {cron!r} is not usable ({exc}) — write e.g. {_CRON_EXAMPLE}") from None
    gaps = [b - a for a, b in pairwise(fires)]
    shortest = min(gaps)
    if shortest < min_interval_s:
        how = f"fires every {duration(shortest)}" if len(set(gaps)) == 1 else f"fires twice within {duration(shortest)}"
        raise r.error(
            node,
            f"cron {cron!r} {how}; the minimum interval is {duration(min_interval_s)} — fire less often, "
            f"e.g. {_CRON_EXAMPLE}",
        )


def duration(seconds: float) -> str:
    """`5 minutes`, `1 hour`, `2 days`: the largest whole unit, else seconds."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


def _github(r: Reader, node: yaml.Node) -> dict[str, JSON]:
    entries = r.mapping(node, "on.github", (), "github: {issues: {types: [labeled]}}")
    if not entries:
        raise r.error(node, "on.github lists no event — add one, e.g. issues: {types: [labeled]}")
    events: dict[str, JSON] = {}
    for event, (key_node, value_node) in entries.items():
        if event in ("schedule", "api"):
            raise r.error(key_node, f"{event!r} is not a GitHub event — put it directly under on:, next to github:")
        if event not in GITHUB_EVENTS:
            raise r.error(key_node, unknown(f"GitHub event {event!r}", event, GITHUB_EVENTS))
        events[event] = {} if r.is_null(value_node) else _filters(r, value_node, event)
    return events


def _filters(r: Reader, node: yaml.Node, event: str) -> JSON:
    where = f"on.github.{event}"
    entries = r.mapping(node, where, EVENT_FILTER_KEYS, f"{event}: {{types: [...], labels: [...]}}")
    config: JSON = {}
    for key, (key_node, value_node) in entries.items():
        here = f"{where}.{key}"
        if key in ("draft", "forks"):
            config[key] = r.boolean(value_node, here)
        elif key == "mention":
            config[key] = r.string(value_node, here, 'mention: "@routines"')
        else:
            items = r.strings(value_node, here, f"{key}: [...]", single=True)
            allowed = _allowed(r, key_node, event, key)
            for value, item_node in items:
                if allowed is not None and value not in allowed:
                    raise r.error(
                        item_node, unknown(f"{key[:-1] if key == 'types' else key} {value!r}", value, allowed)
                    )
                wrong = problem(value) if key.startswith(("branches", "tags", "paths")) else None
                if wrong is not None:
                    raise r.error(item_node, f"{wrong} — GitHub Actions refuses it too (its filter cheat sheet)")
            config[key] = [value for value, _ in items]
    for key in ("tags", "tags-ignore"):
        if key in entries and event != "push":
            raise r.error(entries[key][0], f"{key} filters pushes of tags; only on.github.push takes it, as in Actions")
    for key in ("branches", "tags", "paths"):
        _ignore_as_exclusions(r, entries, config, key)
    return config


def _ignore_as_exclusions(r: Reader, entries: Entries, config: JSON, key: str) -> None:
    """Actions' `<key>-ignore: [p, ...]` kept as `<key>: ["**", "!p", ...]`: anything but what is ignored
    (the last match wins, so a file or branch an ignored pattern matches is excluded; for paths, the
    routine fires when some changed file is not ignored, as in Actions)."""
    ignored = config.pop(f"{key}-ignore", None)
    if ignored is None:
        return
    if key in config:
        raise r.error(
            entries[f"{key}-ignore"][0],
            f"{key} and {key}-ignore cannot both be set (GitHub Actions refuses it too) — "
            f"keep {key} and write the ignored patterns in it with a leading !",
        )
    config[key] = ["**", *(p[1:] if p.startswith("!") else f"!{p}" for p in ignored)]  # `!p` there re-includes


def _allowed(r: Reader, key_node: yaml.Node, event: str, key: str) -> tuple[str, ...] | None:
    if key == "author_association":
        return AUTHOR_ASSOCIATIONS
    if key != "types":
        return None
    if not GITHUB_EVENTS[event]:
        raise r.error(key_node, f"the GitHub event {event!r} has no activity types — remove types")
    return GITHUB_EVENTS[event]
