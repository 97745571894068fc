"""Typed reads from composed YAML nodes; every refusal names the file line of the offending node."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from app.core.errors import RoutineFileError

_BOOL_TAG = "tag:yaml.org,2002:bool"
_TAG_NAMES = {
    "tag:yaml.org,2002:str": "a string",
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    _BOOL_TAG: "true/false",
    "tag:yaml.org,2002:null": "empty",
    "tag:yaml.org,2002:timestamp": "a date",
}


def _yaml12_resolvers() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    resolvers = {
        first: [(tag, regexp) for tag, regexp in pairs if tag != _BOOL_TAG]
        for first, pairs in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    booleans = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
    for first in "tTfF":
        resolvers.setdefault(first, []).append((_BOOL_TAG, booleans))
    return resolvers


class Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: `on`, `off`, `yes`, `no` stay strings (so `on:` is a key)."""

    yaml_implicit_resolvers = _yaml12_resolvers()


Entries = dict[str, tuple[yaml.Node, yaml.Node]]


class Reader:
    """Reads typed values out of one document's nodes; errors are `RoutineFileError`s at the node's line.

    `first_line` is the file line (1-based) holding the document's first line.
    """

    def __init__(self, source: str, first_line: int, loader: Loader) -> None:
        self.source = source
        self.first_line = first_line
        self._loader = loader

    def line(self, node: yaml.Node) -> int:
        return self.first_line + node.start_mark.line

    def error(self, node: yaml.Node, message: str) -> RoutineFileError:
        return RoutineFileError(self.source, self.line(node), message)

    def kind(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        return _TAG_NAMES.get(node.tag, "a value")

    def type_error(self, node: yaml.Node, where: str, expected: str, example: str) -> RoutineFileError:
        return self.error(node, f"{where} must be {expected}, not {self.kind(node)} — write {example}")

    def scalar(self, node: yaml.Node) -> Any:
        return self._loader.construct_object(node, deep=True) if isinstance(node, yaml.ScalarNode) else None

    def is_null(self, node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"

    def mapping(
        self,
        node: yaml.Node,
        where: str,
        known: Iterable[str],
        example: str,
        elsewhere: Mapping[str, str] | None = None,
    ) -> Entries:
        """The mapping's entries by key; refuses non-mappings, non-string, duplicate and unknown keys.

        `elsewhere` maps keys that belong in another section to that section, for the hint.
        """
        if not isinstance(node, yaml.MappingNode):
            raise self.type_error(node, where, "a mapping", example)
        known = tuple(known)
        inside = f" in {where}" if where != "the front matter" else ""
        entries: Entries = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node)
            if not isinstance(key, str):
                raise self.error(
                    key_node, f"keys of {where} must be names, not {self.kind(key_node)} — write {example}"
                )
            if key in entries:
                first = self.line(entries[key][0])
                raise self.error(key_node, f"key {key!r} appears twice{inside} (first on line {first}) — keep one")
            if known and key not in known:
                raise self.error(key_node, _misplaced(f"key {key!r}{inside}", key, known, elsewhere or {}))
            entries[key] = (key_node, value_node)
        return entries

    def string(self, node: yaml.Node, where: str, example: str) -> str:
        value = self.scalar(node)
        if node.tag != "tag:yaml.org,2002:str" or not isinstance(value, str):
            raise self.type_error(node, where, "a string", example)
        if not value.strip():
            raise self.error(node, f"{where} is empty — write {example}")
        return value

    def boolean(self, node: yaml.Node, where: str) -> bool:
        value = self.scalar(node)
        if not isinstance(value, bool):
            raise self.type_error(node, where, "true or false", f"{where.rsplit('.', 1)[-1]}: true")
        return value

    def integer(self, node: yaml.Node, where: str, example: str) -> int:
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.type_error(node, where, "a whole number", example)
        if value < 1:
            raise self.error(node, f"{where} is {value}; it must be at least 1 — write {example}")
        return value

    def positive(self, node: yaml.Node, where: str, example: str) -> float:
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.type_error(node, where, "a number", example)
        if not value > 0:
            raise self.error(node, f"{where} is {value}; it must be more than 0 — write {example}")
        return float(value)

    def strings(
        self, node: yaml.Node, where: str, example: str, *, single: bool = False
    ) -> list[tuple[str, yaml.Node]]:
        """A list of non-empty strings (or one string when `single`), each with its node; duplicates refused."""
        if single and isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
            return [(self.string(node, where, example), node)]
        if not isinstance(node, yaml.SequenceNode):
            raise self.type_error(node, where, "a list", example)
        items: list[tuple[str, yaml.Node]] = []
        for item in node.value:
            value = self.string(item, f"each item of {where}", example)
            if any(value == seen for seen, _ in items):
                raise self.error(item, f"{value!r} is listed twice in {where} — keep one")
            items.append((value, item))
        return items


def unknown(what: str, word: str, known: Iterable[str]) -> str:
    """`unknown key 'shedule' — did you mean 'schedule'?`, or the list of known words when none is close."""
    known = sorted(known)
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if close:
        return f"unknown {what} — did you mean {close[0]!r}?"
    return f"unknown {what} — use one of: {', '.join(known)}"


def _misplaced(what: str, word: str, known: tuple[str, ...], elsewhere: Mapping[str, str]) -> str:
    if word in elsewhere:
        return f"{what} belongs under {elsewhere[word]}: — move it there"
    close = difflib.get_close_matches(word, [*known, *elsewhere], n=1, cutoff=0.6)
    if close and close[0] in elsewhere:
        return f"unknown {what} — did you mean {close[0]!r} (under {elsewhere[close[0]]}:)?"
    return unknown(what, word, known)
