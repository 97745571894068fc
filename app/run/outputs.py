"""Outputs other than a draft pull request: a PR review with inline comments, and one report issue per routine.

The runner calls `deliver_review` for `outputs.review` and `deliver_report` for `outputs.issue`;
both take a `ForgeOutputs` (app/forge/github_outputs.py on GitHub). Notifications are in
app/run/notify.py.

A review run ends with a final message holding a fenced ```review block (prompts.REVIEW_INSTRUCTIONS
tells the model the format). `parse_review` never loses text: a missing or invalid block makes
the whole message the review body, and comments that cannot be placed on a diff line are listed
in the body instead.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.core.errors import CommentsRefused
from app.core.ports import Credentials, ForgeOutputs, InlineComment, IssueRef, PullFile, PullInfo, RepoInfo

REPORT_LABEL = "routines-report"
MAX_BODY_CHARS = 60_000  # GitHub refuses bodies over 65536 characters; leave room for the footer
MAX_INLINE_COMMENTS = 50
MAX_LISTED_FILES = 200


@dataclass(frozen=True)
class ReviewDraft:
    """What the model wrote: the summary, inline comments, and comment texts that named no usable line."""

    summary: str
    comments: tuple[InlineComment, ...] = ()
    loose: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReviewResult:
    review_id: int
    url: str
    inline: int  # comments posted on diff lines
    moved: int  # comments listed in the body instead


def parse_review(text: str) -> ReviewDraft:
    """The review in the last ```review block of `text`; without a valid one, all of `text` is the summary."""
    start = text.lower().rfind("```review")
    if start < 0:
        return ReviewDraft(summary=text.strip())
    opened = start + len("```review")
    while opened < len(text) and text[opened].isspace():
        opened += 1
    try:
        data, end = json.JSONDecoder().raw_decode(text, opened)
    except ValueError:
        return ReviewDraft(summary=text.strip())
    if not isinstance(data, dict):
        return ReviewDraft(summary=text.strip())
    rest = text[end:].lstrip()
    outside = (text[:start] + (rest[3:] if rest.startswith("```") else rest)).strip()
    summary = data.get("summary")
    summary = summary.strip() if isinstance(summary, str) and summary.strip() else outside
    comments: list[InlineComment] = []
    loose: list[str] = []
    raw_comments = data.get("comments")
    for raw in raw_comments if isinstance(raw_comments, list) else []:
        comment = _comment(raw)
        if comment is not None:
            comments.append(comment)
        elif raw:
            said = raw.get("body") if isinstance(raw, dict) else None
            loose.append(said if isinstance(said, str) and said.strip() else json.dumps(raw))
    if raw_comments is not None and not isinstance(raw_comments, list):
        loose.append(json.dumps(raw_comments))
    return ReviewDraft(summary=summary, comments=tuple(comments), loose=tuple(loose))


def _comment(raw: Any) -> InlineComment | None:
    if not isinstance(raw, dict):
        return None
    path, body, line = raw.get("path"), raw.get("body"), _int(raw.get("line"))
    if not isinstance(path, str) or not path.strip() or not isinstance(body, str) or not body.strip() or not line:
        return None
    side = str(raw.get("side") or "RIGHT").upper()
    start = _int(raw.get("start_line"))
    return InlineComment(
        path=path.strip().removeprefix("./").lstrip("/"),
        line=line,
        body=body.strip(),
        side=side if side in ("LEFT", "RIGHT") else "RIGHT",
        start_line=start if start and start < line else None,
    )


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and value > 0 else None


_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def diff_lines(patch: str) -> tuple[set[int], set[int]]:
    """The lines of a GitHub patch a review may comment on: (new-file lines, old-file lines)."""
    right: set[int] = set()
    left: set[int] = set()
    old = new = 0
    for line in patch.splitlines():
        hunk = _HUNK.match(line)
        if hunk:
            old, new = int(hunk.group(1)), int(hunk.group(2))
        elif line.startswith("+"):
            right.add(new)
            new += 1
        elif line.startswith("-"):
            left.add(old)
            old += 1
        elif line.startswith(" ") or line == "":
            right.add(new)
            left.add(old)
            old, new = old + 1, new + 1
    return right, left


def place_comments(
    comments: Sequence[InlineComment], files: Sequence[PullFile]
) -> tuple[list[InlineComment], list[InlineComment]]:
    """Split `comments` into those on lines of the diff (postable inline) and the rest (for the body)."""
    lines = {f.path: diff_lines(f.patch) for f in files if f.patch}
    inline: list[InlineComment] = []
    moved: list[InlineComment] = []
    for comment in comments:
        right, left = lines.get(comment.path, (set(), set()))
        allowed = right if comment.side == "RIGHT" else left
        if comment.line not in allowed or len(inline) >= MAX_INLINE_COMMENTS:
            moved.append(comment)
            continue
        start = comment.start_line
        if start is not None and not all(n in allowed for n in range(start, comment.line)):
            comment = InlineComment(comment.path, comment.line, comment.body, comment.side)
        inline.append(comment)
    return inline, moved


def review_body(draft: ReviewDraft, moved: Sequence[InlineComment], footer: str = "") -> str:
    """The review's body: the summary, then the comments that could not go on a diff line, then `footer`."""
    parts = [draft.summary or "_The review run left no summary._"]
    if moved or draft.loose:
        notes = [f"- `{c.path}` line {c.line}: {_one_block(c.body)}" for c in moved]
        notes += [f"- {_one_block(text)}" for text in draft.loose]
        parts.append("**Comments on lines outside this pull request's diff**\n\n" + "\n".join(notes))
    body = "\n\n".join(parts)
    body = capped(body, "review")
    return f"{body}\n\n---\n{footer}" if footer else body


def _one_block(text: str) -> str:
    return text.strip().replace("\n", "\n  ")


async def deliver_review(
    forge: ForgeOutputs,
    repo: RepoInfo,
    pr_number: int,
    final_text: str,
    creds: Credentials | None,
    *,
    footer: str = "",
    reviewed: str | None = None,
) -> ReviewResult:
    """Post the review in `final_text` on pull request `pr_number` as a COMMENT review, against `reviewed`
    (the head commit the run checked out; default: the current head).

    Comments on lines outside the diff go into the body; if the forge still refuses an inline
    comment, the review is posted once more with every comment in the body. When the pull request has
    moved past `reviewed` since, the review stays on the commit it is about, says so, and puts every
    comment in the body: its lines are those of the reviewed commit, not of the new diff.
    """
    pull = await forge.read_pull(repo, pr_number, creds)
    draft = parse_review(final_text)
    commit = reviewed or pull.head_sha
    if commit != pull.head_sha:
        note = (
            f"> [!NOTE]\n> This review is of commit {commit[:12]}; the pull request has moved to "
            f"{pull.head_sha[:12]} since, which this run did not see."
        )
        draft = dataclasses.replace(draft, summary=f"{note}\n\n{draft.summary}" if draft.summary else note)
        inline: list[InlineComment] = []
        moved = list(draft.comments)
    else:
        inline, moved = place_comments(draft.comments, pull.files)
    try:
        review_id, url = await forge.post_review(
            repo,
            pr_number,
            commit_id=commit,
            body=review_body(draft, moved, footer),
            comments=inline,
            creds=creds,
        )
    except CommentsRefused:
        moved, inline = [*inline, *moved], []
        review_id, url = await forge.post_review(
            repo, pr_number, commit_id=commit, body=review_body(draft, moved, footer), comments=[], creds=creds
        )
    return ReviewResult(review_id=review_id, url=url, inline=len(inline), moved=len(moved) + len(draft.loose))


def review_context(pull: PullInfo) -> str:
    """What the first message of a review run says about the pull request: its commits and changed files."""
    listed = [f"- {f.path} ({f.status})" for f in pull.files[:MAX_LISTED_FILES]]
    if len(pull.files) > MAX_LISTED_FILES:
        listed.append(f"- … and {len(pull.files) - MAX_LISTED_FILES} more")
    return (
        f"Review pull request #{pull.number} ({pull.url}): {pull.head_ref} into {pull.base_ref}.\n"
        f"BASE is {pull.base_sha} and HEAD is {pull.head_sha} (checked out). Changed files:\n" + "\n".join(listed)
    )


def report_text(routine: str, summary: str, error: str | None, footer: str) -> tuple[str, str]:
    """The title and body of a routine's report: the agent's summary, or the failure with what was done so far."""
    first = (summary.strip().splitlines() or [""])[0].lstrip("# ").strip()
    if error is not None:
        title = f"{routine}: the last run failed"
        body = f"> [!WARNING]\n> **The last run failed**: {error}\n\n{summary.strip() or '_No summary._'}"
    else:
        title = first[:120] or f"{routine}: report"
        body = summary.strip() or "_The run left no summary._"
    return title, f"{body}\n\n---\n{footer}" if footer else body


_MARKER_TEXT = "routines:report:"


def capped(body: str, what: str = "text") -> str:
    """`body`, cut to MAX_BODY_CHARS with a note (GitHub refuses a body over 65,536 characters)."""
    if len(body) <= MAX_BODY_CHARS:
        return body
    return body[:MAX_BODY_CHARS] + f"\n\n[... cut: the full {what} is in the run's event log ...]"


def report_marker(routine: str) -> str:
    """The hidden line that marks a routine's report issue (GitHub does not render HTML comments)."""
    return f"<!-- {_MARKER_TEXT}{routine} -->"


async def deliver_report(
    forge: ForgeOutputs, repo: RepoInfo, routine_name: str, title: str, body: str, creds: Credentials | None
) -> IssueRef:
    """Write the routine's report: update its one open report issue, or open it when there is none.

    The issue is found by the `routines-report` label and the routine's hidden marker, so a
    routine failing every night keeps one issue up to date instead of opening one per run.
    """
    marker = report_marker(routine_name)
    body = body.replace(_MARKER_TEXT, "routines: report:")  # a marker in the text (another routine's) is no marker
    full = f"{capped(body)}\n\n{marker}"
    title = (title.strip().splitlines() or [f"{routine_name}: report"])[0][:200]
    found = await forge.find_issue(repo, REPORT_LABEL, marker, creds)
    if found is not None:
        return await forge.update_issue(repo, found.number, title=title, body=full, creds=creds)
    return await forge.create_issue(repo, title=title, body=full, labels=[REPORT_LABEL], creds=creds)
