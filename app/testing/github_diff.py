"""A pull request's diff as the GitHub test server shows it: `GET /pulls/{n}/files` entries and commentable lines.

Computed with pygit2 from the bare repository, three-dot style like GitHub: from the merge base of
base and head to head. Which lines a review may comment on comes from the diff's hunks directly
(not from re-parsing the patch text), so a client's own patch parsing is checked against an
independent answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygit2

JSON = dict[str, Any]
STATUS = {"A": "added", "D": "removed", "M": "modified", "R": "renamed", "C": "copied", "T": "changed"}
NO_NEWLINE = "\\ No newline at end of file\n"


@dataclass
class FileDiff:
    """One changed file: its GitHub `files` entry and the lines a review comment may target per side."""

    entry: JSON
    right: set[int] = field(default_factory=set)
    left: set[int] = field(default_factory=set)


def pull_diff(path: Path, base_sha: str, head_sha: str, html_url: str, api_url: str) -> list[FileDiff]:
    """The files changed between the merge base of `base_sha` and `head_sha`, and `head_sha`.

    `html_url` / `api_url` are the repository's web and API addresses, for the entries' links.
    """
    repo = pygit2.Repository(str(path))
    base = repo.merge_base(base_sha, head_sha) or pygit2.Oid(hex=base_sha)
    diff = repo.diff(repo[base].peel(pygit2.Commit), repo[head_sha].peel(pygit2.Commit), context_lines=3)
    diff.find_similar()
    return [_file(patch, head_sha, html_url, api_url) for patch in diff if patch is not None]


def _file(patch: pygit2.Patch, head_sha: str, html_url: str, api_url: str) -> FileDiff:
    delta = patch.delta
    name = delta.new_file.path if delta.status_char() != "D" else delta.old_file.path
    found = FileDiff(entry={})
    text: list[str] = []
    for hunk in patch.hunks:
        text.append(hunk.header if hunk.header.endswith("\n") else hunk.header + "\n")
        for line in hunk.lines:
            if line.origin in ("=", ">", "<"):
                text.append(NO_NEWLINE)
                continue
            content = line.content if line.content.endswith("\n") else line.content + "\n"
            text.append(f"{line.origin}{content}")
            if line.origin in ("+", " "):
                found.right.add(line.new_lineno)
            if line.origin in ("-", " "):
                found.left.add(line.old_lineno)
    _context, additions, deletions = patch.line_stats
    blob = str(delta.new_file.id if delta.status_char() != "D" else delta.old_file.id)
    found.entry = {
        "sha": blob,
        "filename": name,
        "status": STATUS.get(delta.status_char(), "modified"),
        "additions": additions,
        "deletions": deletions,
        "changes": additions + deletions,
        "blob_url": f"{html_url}/blob/{head_sha}/{name}",
        "raw_url": f"{html_url}/raw/{head_sha}/{name}",
        "contents_url": f"{api_url}/contents/{name}?ref={head_sha}",
    }
    if text and not delta.is_binary:
        found.entry["patch"] = "".join(text).removesuffix("\n")
    if delta.status_char() == "R":
        found.entry["previous_filename"] = delta.old_file.path
    return found
