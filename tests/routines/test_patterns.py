"""GitHub Actions' filter patterns: the examples of its filter pattern cheat sheet, and what it refuses."""

from __future__ import annotations

import pytest

from app.core.errors import RoutineFileError
from app.routines.files import parse_routine
from app.routines.patterns import PatternError, compile_pattern, problem, selected

# (patterns, name, selected?) — branches and tags, then file paths, as the cheat sheet lists them
CHEAT_SHEET = [
    (["feature/*"], "feature/my-branch", True),
    (["feature/*"], "feature/your-branch", True),
    (["feature/*"], "feature/beta-a/my-branch", False),
    (["feature/**"], "feature/beta-a/my-branch", True),
    (["feature/**"], "feature/your-branch", True),
    (["feature/**"], "feature/mona/the/octocat", True),
    (["main", "releases/mona-the-octocat"], "main", True),
    (["main", "releases/mona-the-octocat"], "releases/mona-the-octocat", True),
    (["*"], "main", True),
    (["*"], "releases", True),
    (["*"], "releases/v1", False),
    (["**"], "all/the/branches", True),
    (["**"], "every/tag", True),
    (["*feature"], "mona-feature", True),
    (["*feature"], "feature", True),
    (["*feature"], "ver-10-feature", True),
    (["v2*"], "v2", True),
    (["v2*"], "v2.0", True),
    (["v2*"], "v2.9", True),
    (["v[12].[0-9]+.[0-9]+"], "v1.10.1", True),
    (["v[12].[0-9]+.[0-9]+"], "v2.0.0", True),
    (["v[12].[0-9]+.[0-9]+"], "v3.0.0", False),
    (["v[12].[0-9]+.[0-9]+"], "v1.x.0", False),
    (["*"], "README.md", True),
    (["*"], "server.rb", True),
    (["*.jsx?"], "page.js", True),
    (["*.jsx?"], "page.jsx", True),
    (["*.jsx?"], "page.jsxx", False),
    (["**"], "all/the/files.md", True),
    (["*.js"], "app.js", True),
    (["*.js"], "index.js", True),
    (["*.js"], "src/index.js", False),
    (["**.js"], "index.js", True),
    (["**.js"], "js/index.js", True),
    (["**.js"], "src/js/app.js", True),
    (["docs/*"], "docs/README.md", True),
    (["docs/*"], "docs/file.txt", True),
    (["docs/*"], "docs/mona/octocat.txt", False),
    (["docs/**"], "docs/README.md", True),
    (["docs/**"], "docs/mona/octocat.txt", True),
    (["docs/**/*.md"], "docs/README.md", True),
    (["docs/**/*.md"], "docs/mona/hello-world.md", True),
    (["docs/**/*.md"], "docs/a/markdown/file.md", True),
    (["**/docs/**"], "docs/hello.md", True),
    (["**/docs/**"], "dir/docs/my-file.txt", True),
    (["**/docs/**"], "space/docs/plan/space.doc", True),
    (["**/README.md"], "README.md", True),
    (["**/README.md"], "js/README.md", True),
    (["**/*src/**"], "a/src/app.js", True),
    (["**/*src/**"], "my-src/code/js/app.js", True),
    (["**/*-post.md"], "my-post.md", True),
    (["**/*-post.md"], "path/their-post.md", True),
    (["**/migrate-*.sql"], "migrate-10909.sql", True),
    (["**/migrate-*.sql"], "db/migrate-v1.0.sql", True),
    (["**/migrate-*.sql"], "db/sept/migrate-v1.sql", True),
    (["*.md", "!README.md"], "hello.md", True),
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README.md"], "docs/hello.md", False),
    (["*.md", "!README.md", "README*"], "hello.md", True),
    (["*.md", "!README.md", "README*"], "README.md", True),
    (["*.md", "!README.md", "README*"], "README.doc", True),
    # the special characters of the cheat sheet's own definitions
    (["Octo*"], "Octocat", True),
    (["[CB]at"], "Cat", True),
    (["[CB]at"], "Bat", True),
    (["[CB]at"], "Rat", False),
    (["[1-2]00"], "100", True),
    (["[1-2]00"], "200", True),
    (["[1-2]00"], "300", False),
    (["[0-9a-z]"], "x", True),
    (["[0-9a-z]"], "X", False),
    (["ab+c"], "abbbc", True),
    (["ab+c"], "ac", False),
    (["ab?c"], "ac", True),
    (["+x"], "+x", True),  # at the very start: a plain character
    (["\\!file"], "!file", True),
    (["\\*"], "*", True),
    (["\\*"], "x", False),
    (["escape\\\\backslash"], "escape\\backslash", True),
    ([".yml"], "fyml", False),  # a dot is a dot
    (["a!b"], "a!b", True),
]


@pytest.mark.parametrize(("patterns", "name", "expected"), CHEAT_SHEET)
def test_the_cheat_sheet(patterns: list[str], name: str, expected: bool) -> None:
    assert selected(patterns, name) is expected


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("[]", "lists no character"),
        ("v[12", "is not closed"),
        ("[a-Z]", "not a range"),
        ("[9-0]", "not a range"),
        ("[%-/]", "not a range"),
        ("[a_]", "cannot be in brackets"),
        ("trailing\\", "escapes nothing"),
        ("*?", "none to repeat"),
        ("a++", "none to repeat"),
        ("**+", "none to repeat"),
    ],
)
def test_patterns_actions_refuses_are_refused(pattern: str, reason: str) -> None:
    with pytest.raises(PatternError, match=reason):
        compile_pattern(pattern)
    assert problem("!" + pattern) is not None


def test_a_wrong_pattern_in_a_routine_file_names_its_line() -> None:
    text = (
        "---\nname: r\nrepo: acme/api\non:\n  github:\n    push:\n"
        "      branches:\n        - main\n        - 'v[12'\n---\nGo.\n"
    )
    with pytest.raises(RoutineFileError) as refused:
        parse_routine(text, "r.md")
    assert refused.value.line == 9 and "is not closed" in str(refused.value)
