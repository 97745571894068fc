"""GitHub Actions' filter patterns for branches, tags and paths, as its "filter pattern cheat sheet" defines them.

- `*` matches zero or more characters, but not `/`; `**` matches zero or more of any character, and
  `**/` zero or more whole folders (`**/README.md` matches `README.md` too).
- `?` matches zero or one of the preceding character, `+` one or more of it (at the very start of a
  pattern they are plain characters).
- `[...]` matches one character listed in the brackets or in a range; ranges only within `a-z`,
  `A-Z` and `0-9`, e.g. `[CB]at`, `[1-2]00`, `[0-9a-z]`.
- `!` at the start of a pattern excludes what it matches; elsewhere it is a plain character.
- `\\` makes the next character plain (`\\*`, `\\!file`, `\\\\`).
- A list of patterns selects a name when the last pattern that matches it is not a `!` pattern.

A pattern Actions refuses (`[]`, an unclosed `[`, a range like `[a-Z]` or `[%-/]`, a trailing `\\`,
a `?` or `+` with no character before it to repeat) raises PatternError naming the position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache


class PatternError(ValueError):
    """A pattern GitHub Actions would refuse; the message names the position and the reason."""


def selected(patterns: Iterable[str], name: str) -> bool:
    """Whether `name` is selected by `patterns` (the last one that matches decides; `!` excludes)."""
    chosen = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if compile_pattern(pattern[1:] if negated else pattern).fullmatch(name):
            chosen = not negated
    return chosen


def any_selected(patterns: Iterable[str], names: Iterable[str]) -> bool:
    """Whether some name of `names` is selected by `patterns`."""
    kept = list(patterns)
    return any(selected(kept, name) for name in names)


def problem(pattern: str) -> str | None:
    """Why Actions would refuse `pattern` (with or without its leading `!`), or None when it is fine."""
    try:
        compile_pattern(pattern[1:] if pattern.startswith("!") else pattern)
    except PatternError as exc:
        return str(exc)
    return None


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of one pattern (without its leading `!`), matched with `fullmatch`."""
    return re.compile("".join(_Translation(pattern).parts()))


class _Translation:
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.at = 0
        self.repeatable = False  # may a `?` or `+` follow what was written last?

    def parts(self) -> list[str]:
        out: list[str] = []
        while self.at < len(self.pattern):
            char = self.pattern[self.at]
            if char == "*":
                out.append(self._stars())
                self.repeatable = False
            elif char in "?+":
                out.append(self._quantifier(char))
            elif char == "[":
                out.append(self._brackets())
                self.repeatable = True
            elif char == "\\":
                if self.at + 1 >= len(self.pattern):
                    raise self._error(self.at, "a \\ at the end escapes nothing; write \\\\ for a backslash")
                out.append(re.escape(self.pattern[self.at + 1]))
                self.at += 2
                self.repeatable = True
            else:
                out.append(re.escape(char))
                self.at += 1
                self.repeatable = True
        return out

    def _stars(self) -> str:
        rest = self.pattern[self.at :]
        if rest.startswith("**/"):
            self.at += 3
            return "(?:.+/)?"
        if rest.startswith("**"):
            self.at += 2
            return ".*"
        self.at += 1
        return "[^/]*"

    def _quantifier(self, char: str) -> str:
        if self.at == 0:
            self.at += 1
            self.repeatable = True
            return re.escape(char)
        if not self.repeatable:
            raise self._error(self.at, f"{char} repeats the character before it, and there is none to repeat here")
        self.at += 1
        self.repeatable = False
        return char

    def _brackets(self) -> str:
        start = self.at
        self.at += 1
        members: list[str] = []
        while self.at < len(self.pattern) and self.pattern[self.at] != "]":
            char, ahead = self.pattern[self.at], self.pattern[self.at + 1 : self.at + 3]
            if len(ahead) == 2 and ahead[0] == "-" and ahead[1] != "]":
                low, high = char, self.pattern[self.at + 2]
                if not _range_ok(low, high):
                    raise self._error(self.at, f"[{low}-{high}] is not a range Actions takes (a-z, A-Z or 0-9 only)")
                members.append(f"{re.escape(low)}-{re.escape(high)}")
                self.at += 3
                continue
            if not _member_ok(char):
                raise self._error(self.at, f"{char!r} cannot be in brackets; list letters and digits only")
            members.append(re.escape(char))
            self.at += 1
        if self.at >= len(self.pattern):
            raise self._error(start, "[ is not closed; add ] or write \\[ for a bracket")
        if not members:
            raise self._error(start, "[] lists no character; put the characters to match between the brackets")
        self.at += 1
        return "[" + "".join(members) + "]"

    def _error(self, at: int, reason: str) -> PatternError:
        return PatternError(f"pattern {self.pattern!r}, at position {at + 1}: {reason}")


def _member_ok(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _range_ok(low: str, high: str) -> bool:
    same_kind = (low.islower() and high.islower()) or (low.isupper() and high.isupper()) or (
        low.isdigit() and high.isdigit()
    )
    return _member_ok(low) and _member_ok(high) and same_kind and low <= high
