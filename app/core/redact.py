"""Redaction: every known secret value that shows up in text, JSON or a log record becomes `[NAME]`.

Each value is also caught in the forms it takes on the way out: URL-encoded, JSON-escaped, and base64
(standard and URL-safe, at each of the three byte alignments, so it is found inside e.g. `user:token`
Basic credentials). Multi-line values (PEM keys) also match line by line. All forms of all values
are compiled into one regular expression shaped as a trie, so the cost of a scan grows slowly with the
number of secrets. A run's redactor is a `child()` of its process's: the process's own secrets (a PEM
key has dozens of forms) are compiled once, and each run compiles only the few values it adds.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from typing import TypeVar
from urllib.parse import quote, quote_plus

MIN_LENGTH = 8
MIN_LINE_LENGTH = 16
T = TypeVar("T")
Trie = dict[str, "Trie"]


class Redactor:
    """Knows secret values by name; `text()` and `redact()` replace them. Safe to share between threads.

    A redactor with a `parent` also replaces everything the parent knows, now and later."""

    def __init__(self, parent: Redactor | None = None) -> None:
        self._forms: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self._parent = parent

    def child(self) -> Redactor:
        """A redactor that knows what this one knows; what is added to it stays its own."""
        return Redactor(parent=self)

    def add(self, name: str, value: str) -> None:
        """Redact `value` as `[name]` from now on. Values shorter than 8 characters are ignored (too common)."""
        if len(value) < MIN_LENGTH:
            return
        with self._lock:
            for form in _forms(value):
                self._forms.setdefault(form, name)
            self._pattern = None

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> set[str]:
        inherited = self._parent._names() if self._parent is not None else set()
        return inherited | set(self._forms.values())

    def text(self, text: str) -> str:
        """`text` with every known form of every value replaced by `[NAME]` (where forms known to this
        redactor and to its parent overlap, the whole stretch they cover becomes the longer one's name)."""
        if not text:
            return text
        spans: list[tuple[int, int, str]] = []
        redactor: Redactor | None = self
        while redactor is not None:
            pattern, forms = redactor._compiled(), redactor._forms
            if pattern is not None:
                spans += [(m.start(), m.end(), forms[m.group(0)]) for m in pattern.finditer(text)]
            redactor = redactor._parent
        if not spans:
            return text
        spans.sort()
        out: list[str] = []
        done, (start, end, name) = 0, spans[0]
        for s, e, n in spans[1:]:
            if s < end:
                if e - s > end - start:
                    name = n
                end = max(end, e)
                continue
            out += [text[done:start], f"[{name}]"]
            done, (start, end, name) = end, (s, e, n)
        out += [text[done:start], f"[{name}]", text[end:]]
        return "".join(out)

    def redact(self, data: T) -> T:
        """A copy of `data` (str, or dict/list/tuple nesting them) with secrets replaced in keys and values."""
        if isinstance(data, str):
            return self.text(data)  # type: ignore[return-value]
        if isinstance(data, dict):
            return {self.redact(k): self.redact(v) for k, v in data.items()}  # type: ignore[return-value]
        if isinstance(data, list | tuple):
            return type(data)(self.redact(v) for v in data)
        return data

    def _compiled(self) -> re.Pattern[str] | None:
        pattern = self._pattern
        if pattern is None and self._forms:
            with self._lock:
                pattern = self._pattern = re.compile(_trie_pattern(list(self._forms)))
        return pattern


def _forms(value: str) -> set[str]:
    forms = {value, quote(value, safe=""), quote(value), quote_plus(value), json.dumps(value)[1:-1]}
    raw = value.encode()
    for offset in range(3):
        padded = b"\0" * offset + raw
        start = -(-8 * offset // 6)
        end = 8 * (offset + len(raw)) // 6
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            forms.add(encode(padded).decode("ascii")[start:end])
    if "\n" in value:
        lines = (line.strip() for line in value.splitlines())
        forms.update(line for line in lines if len(line) >= MIN_LINE_LENGTH and not line.startswith("-----"))
    return {f for f in forms if len(f) >= MIN_LENGTH}


def _trie_pattern(words: list[str]) -> str:
    """One regex matching any of `words`, longest first, built from their trie (fast with many words)."""
    root: Trie = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}
    return _emit(root)


def _emit(node: Trie) -> str:
    literal = ""
    while len(node) == 1 and "" not in node:
        char, child = next(iter(node.items()))
        literal += re.escape(char)
        node = child
    branches = [re.escape(c) + _emit(child) for c, child in sorted(node.items()) if c]
    if not branches:
        return literal
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    return literal + ("(?:" + body + ")?" if "" in node else body)


class RedactingFilter(logging.Filter):
    """Redacts a record's message (arguments merged in) and its exception text. Attach it to handlers:
    a filter on a logger does not see records propagated from its children."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.text(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.text(record.stack_info)
        return True


def redacting_filter(redactor: Redactor) -> logging.Filter:
    return RedactingFilter(redactor)


def redact_logs(secrets: list[tuple[str, str]]) -> None:
    """Every log line of this process passes through a redactor that knows its own `secrets` (name, value):
    the root logger's handlers are given the filter (set up logging first)."""
    redactor = Redactor()
    for name, value in secrets:
        redactor.add(name, value)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redacting_filter(redactor))
