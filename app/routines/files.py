"""Routine files: Markdown with YAML front matter, read into `app.core.domain.Routine`s or refused with `file:line`.

A file is `---`, the front matter (see `routine.schema.json`), `---`, then the prompt. Every field but
`name`, `repo` and the prompt has a default. A wrong file raises `RoutineFileError` whose `str()` is
`file:line: what is wrong — how to fix`.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from app.core.domain import Routine
from app.core.errors import ConfigError, RoutineFileError
from app.routines.fields import PLACEHOLDER, build_routine
from app.routines.reader import Loader, Reader

DEFAULT_MIN_INTERVAL_S = 3600.0
_YAML_HINT = "check the indentation, and quote values that contain ': ' or ' #' or start with '*', '@', '{' or '['"


def parse_routine(text: str, source: str, *, min_interval_s: float = DEFAULT_MIN_INTERVAL_S) -> Routine:
    """The routine in `text`; `source` names it in errors and becomes `Routine.source`.

    A cron schedule firing more often than every `min_interval_s` seconds is refused.
    """
    front, body, body_line = _split(text, source)
    loader = Loader(front)
    try:
        root = _compose(loader, source)
        if root is None:
            raise RoutineFileError(source, 1, "the front matter is empty — add at least `name:` and `repo:`")
        if not isinstance(root, yaml.MappingNode):
            raise RoutineFileError(
                source, 2, "the front matter must be keys and values — write e.g. `name: my-routine`"
            )
        routine = build_routine(Reader(source, 2, loader), root, body.strip(), min_interval_s)
    finally:
        loader.dispose()
    if not routine.prompt:
        raise RoutineFileError(source, body_line, "the prompt is empty — write what the routine should do below '---'")
    return routine


def load_routine(path: Path, *, min_interval_s: float = DEFAULT_MIN_INTERVAL_S) -> Routine:
    """The routine in the file at `path` (UTF-8)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RoutineFileError(str(path), 1, f"cannot be read ({exc}) — make it a readable UTF-8 file") from None
    return parse_routine(text, str(path), min_interval_s=min_interval_s)


def load_routines(folder: Path, *, min_interval_s: float = DEFAULT_MIN_INTERVAL_S) -> dict[str, Routine]:
    """Every routine of the `*.md` files in `folder`, by name; the first wrong file raises its error.

    Two files with the same `name` are refused. A missing folder raises ConfigError.
    """
    routines, errors = _read_folder(folder, min_interval_s)
    if errors:
        raise errors[0]
    return routines


def validate_folder(folder: Path, *, min_interval_s: float = DEFAULT_MIN_INTERVAL_S) -> list[RoutineFileError]:
    """Every error of every `*.md` file in `folder` (one per file, plus duplicate names); empty when all is well."""
    return _read_folder(folder, min_interval_s)[1]


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the front matter, as shipped in `app/routines/routine.schema.json`."""
    text = resources.files("app.routines").joinpath("routine.schema.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def render_group(template: str, routine: Routine, repo: str) -> str:
    """A concurrency group: `{{ repo }}` and `{{ routine }}` replaced; any other `{{ x }}` is left as written."""
    values = {"repo": repo, "routine": routine.name}
    return PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), template)


def _split(text: str, source: str) -> tuple[str, str, int]:
    """(front matter, body, file line of the closing '---'); the front matter starts on line 2."""
    lines = text.removeprefix("\ufeff").splitlines()
    if not lines or lines[0].rstrip() != "---":
        raise RoutineFileError(
            source,
            1,
            "no front matter — start the file with a '---' line, then `name:` and `repo:`, "
            "then a '---' line and the prompt",
        )
    for index, line in enumerate(lines[1:], start=1):
        if line.rstrip() == "---":
            return "\n".join(lines[1:index]), "\n".join(lines[index + 1 :]), index + 1
    raise RoutineFileError(source, 1, "the front matter is never closed — add a '---' line after its last key")


def _compose(loader: Loader, source: str) -> yaml.Node | None:
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = 2 + mark.line if mark else 1
        raise RoutineFileError(source, line, f"invalid YAML: {exc.problem or exc.context} — {_YAML_HINT}") from None
    except yaml.YAMLError as exc:
        raise RoutineFileError(source, 1, f"invalid YAML: {exc} — {_YAML_HINT}") from None


def _read_folder(folder: Path, min_interval_s: float) -> tuple[dict[str, Routine], list[RoutineFileError]]:
    if not folder.is_dir():
        raise ConfigError(f"routines folder {folder} does not exist; create it or set ROUTINES_DIR")
    routines: dict[str, Routine] = {}
    errors: list[RoutineFileError] = []
    for path in sorted(folder.glob("*.md")):
        try:
            routine = load_routine(path, min_interval_s=min_interval_s)
        except RoutineFileError as exc:
            errors.append(exc)
            continue
        if routine.name in routines:
            first = routines[routine.name].source
            line = _name_line(path.read_text(encoding="utf-8"))
            errors.append(
                RoutineFileError(str(path), line, f"name {routine.name!r} is already used by {first} — rename one")
            )
            continue
        routines[routine.name] = routine
    return routines, errors


def _name_line(text: str) -> int:
    match = re.search(r"^name\s*:", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else 1
