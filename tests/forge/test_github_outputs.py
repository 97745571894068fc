"""GitHubOutputs against the GitHub test server: reading a PR's diff, reviews with inline comments, report issues."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.core.errors import CommentsRefused, ForgeError
from app.core.ports import Credentials, InlineComment, RepoInfo
from app.forge.github import GitHubForge
from app.forge.github_outputs import GitHubOutputs
from app.run.outputs import diff_lines
from app.testing.github_server import GitHubState, create_app, generate_app_key
from app.testing.serve import serve_in_thread

APP = "".join(f"line {n}\n" for n in range(1, 31))
CHANGED = APP.replace("line 10\n", "line ten\n").replace("line 20\n", "line 20\nline 20b\n")


@dataclass
class Hub:
    state: GitHubState
    url: str
    installation: int


@pytest.fixture(scope="module")
def app_key() -> str:
    return generate_app_key()


@pytest.fixture
def hub(tmp_path: Path, app_key: str) -> Iterator[Hub]:
    state = GitHubState(tmp_path / "github", private_key=app_key)
    with serve_in_thread(create_app(state)) as served:
        state.base_url = served.url
        installation = state.add_installation("acme")
        source = tmp_path / "src"
        source.mkdir()
        (source / "app.txt").write_text(APP)
        (source / "other.txt").write_text("untouched\n")
        state.add_repo("acme/api", installation, source_dir=source)
        state.commit_files("acme/api", "feature", {"app.txt": CHANGED, "new.txt": "a\nb\n"}, "feature work")
        yield Hub(state, served.url, installation)


@pytest.fixture
async def gh(hub: Hub) -> AsyncIterator[tuple[GitHubOutputs, RepoInfo, Credentials, int]]:
    async with GitHubForge(hub.url, str(hub.state.app_id), hub.state.private_key, timeout_s=10) as forge:
        repo = await forge.resolve("acme/api")
        creds = await forge.credentials(repo, {"pull_requests": "write", "issues": "write"})
        pr = await forge.open_pull_request(
            repo, head="feature", base="main", title="Feature", body="", draft=False, creds=creds
        )
        yield GitHubOutputs(forge), repo, creds, pr.number


async def test_read_pull_gives_head_base_and_patches(gh: tuple[GitHubOutputs, RepoInfo, Credentials, int]) -> None:
    outputs, repo, creds, number = gh
    pull = await outputs.read_pull(repo, number, creds)
    assert (pull.number, pull.head_ref, pull.base_ref) == (number, "feature", "main")
    assert len(pull.head_sha) == 40 and len(pull.base_sha) == 40 and pull.head_sha != pull.base_sha
    files = {f.path: f for f in pull.files}
    assert set(files) == {"app.txt", "new.txt"}
    assert files["new.txt"].status == "added" and files["app.txt"].status == "modified"
    patch = files["app.txt"].patch or ""
    assert "-line 10\n+line ten" in patch and "+line 20b" in patch
    right, left = diff_lines(patch)
    assert {10, 21}.issubset(right) and 10 in left and 1 not in right and 30 not in right


async def test_read_pull_follows_new_pushes(hub: Hub, gh: tuple[GitHubOutputs, RepoInfo, Credentials, int]) -> None:
    outputs, repo, creds, number = gh
    before = await outputs.read_pull(repo, number, creds)
    pushed = hub.state.commit_files("acme/api", "feature", {"other.txt": "touched\n"})
    after = await outputs.read_pull(repo, number, creds)
    assert after.head_sha == pushed != before.head_sha
    assert {f.path for f in after.files} == {"app.txt", "new.txt", "other.txt"}


async def test_review_with_inline_comments_on_diff_lines(
    hub: Hub, gh: tuple[GitHubOutputs, RepoInfo, Credentials, int]
) -> None:
    outputs, repo, creds, number = gh
    pull = await outputs.read_pull(repo, number, creds)
    comments = [
        InlineComment("app.txt", 10, "Why spell it out?"),
        InlineComment("app.txt", 21, "Two lines", start_line=20),
        InlineComment("app.txt", 10, "Old text was fine", side="LEFT"),
    ]
    review_id, url = await outputs.post_review(
        repo, number, commit_id=pull.head_sha, body="Looks fine.", comments=comments, creds=creds
    )
    [review] = hub.state.reviews("acme/api")
    assert review["id"] == review_id and url == review["html_url"]
    assert review["state"] == "COMMENTED" and review["commit_id"] == pull.head_sha and review["body"] == "Looks fine."
    assert [(c["path"], c["line"], c["side"]) for c in review["comments"]] == [
        ("app.txt", 10, "RIGHT"),
        ("app.txt", 21, "RIGHT"),
        ("app.txt", 10, "LEFT"),
    ]
    assert review["comments"][1]["start_line"] == 20


@pytest.mark.parametrize(
    "comment",
    [InlineComment("app.txt", 1, "far from any change"), InlineComment("other.txt", 1, "file not in the PR")],
)
async def test_comment_outside_the_diff_is_refused_like_github(
    hub: Hub, gh: tuple[GitHubOutputs, RepoInfo, Credentials, int], comment: InlineComment
) -> None:
    outputs, repo, creds, number = gh
    pull = await outputs.read_pull(repo, number, creds)
    with pytest.raises(CommentsRefused, match="not on a line of the diff"):
        await outputs.post_review(repo, number, commit_id=pull.head_sha, body="x", comments=[comment], creds=creds)
    assert hub.state.reviews("acme/api") == []


async def test_report_issue_is_found_by_label_and_marker_then_updated(
    hub: Hub, gh: tuple[GitHubOutputs, RepoInfo, Credentials, int]
) -> None:
    outputs, repo, creds, _ = gh
    hub.state.add_issue("acme/api", "Someone else's", "<!-- routines:report:nightly -->", labels=["bug"])
    assert await outputs.find_issue(repo, "routines-report", "<!-- routines:report:nightly -->", creds) is None
    created = await outputs.create_issue(
        repo, title="Nightly", body="first\n<!-- routines:report:nightly -->", labels=["routines-report"], creds=creds
    )
    assert created.created and created.url.endswith(f"/issues/{created.number}")
    found = await outputs.find_issue(repo, "routines-report", "<!-- routines:report:nightly -->", creds)
    assert found is not None and found.number == created.number and not found.created
    assert await outputs.find_issue(repo, "routines-report", "<!-- routines:report:weekly -->", creds) is None
    updated = await outputs.update_issue(repo, created.number, title="Nightly 2", body="second", creds=creds)
    assert updated.number == created.number
    record = hub.state.repos["acme/api"].issues[created.number]
    assert (record["title"], record["body"], record["labels"]) == ("Nightly 2", "second", ["routines-report"])
    assert record["user"] == "routines-test[bot]"


async def test_issues_need_the_issues_permission(hub: Hub) -> None:
    async with GitHubForge(hub.url, str(hub.state.app_id), hub.state.private_key, timeout_s=10) as forge:
        repo = await forge.resolve("acme/api")
        creds = await forge.credentials(repo, {"pull_requests": "write"})
        with pytest.raises(ForgeError, match="lacks a permission") as raised:
            await GitHubOutputs(forge).create_issue(repo, title="t", body="b", labels=[], creds=creds)
        assert creds.password not in str(raised.value)


async def test_without_creds_a_scoped_token_is_minted(
    hub: Hub, gh: tuple[GitHubOutputs, RepoInfo, Credentials, int]
) -> None:
    outputs, repo, _, number = gh
    pull = await outputs.read_pull(repo, number, None)
    assert pull.number == number
    minted = list(hub.state.tokens.values())[-1]
    assert minted.permissions == {"metadata": "read", "pull_requests": "read"}


def test_the_test_server_lists_issues_by_label_and_state(hub: Hub) -> None:
    token = hub.state.issue_token(hub.installation, ["acme/api"], {"issues": "write"}).token
    headers = {"authorization": f"token {token}"}
    hub.state.add_issue("acme/api", "a", labels=["x", "y"])
    closed = hub.state.add_issue("acme/api", "b", labels=["x"])
    hub.state.repos["acme/api"].issues[closed]["state"] = "closed"
    with httpx.Client(base_url=hub.url, headers=headers) as client:
        assert [i["title"] for i in client.get("/repos/acme/api/issues", params={"labels": "x"}).json()] == ["a"]
        listed = client.get("/repos/acme/api/issues", params={"labels": "x", "state": "all"}).json()
        assert [i["title"] for i in listed] == ["b", "a"]
        assert client.get("/repos/acme/api/issues", params={"labels": "x,z"}).json() == []
        too_long = client.post("/repos/acme/api/issues", json={"title": "t", "body": "x" * 70_000})
        assert too_long.status_code == 422
