"""A hostile agent, scripted end to end through web, worker, bubblewrap and the test servers: every trick
with paths and special files it can play on the editor and on the runner that snapshots its tree.

Each attack must return or change nothing outside the workspace, put no secret in a model request or
an event, and leave the run able to go on and end in a clear state.
"""

from __future__ import annotations

import json

import pygit2

from app.testing.anthropic_server import Turn
from tests.security.conftest import Hostile, bash, edit

DEEP = "/".join(["d"] * 200)


def test_links_special_files_and_odd_names_reach_nothing_outside(hostile: Hostile) -> None:
    key, data, outside = str(hostile.key_file), str(hostile.key_file.parent), str(hostile.outside)
    setup = (
        f"ln -s {key} key-link; ln -s / root-link; ln -s {data} data-link; ln -s .. up; ln -s {outside} out-link; "
        "ln -s /proc/self/environ env-link; ln -s /proc/1/root proc-root; "
        f"ln {key} hard-key 2>/dev/null; ln /etc/hostname hard-etc 2>/dev/null; "
        "mkfifo pipe; python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('sock')\"; "
        "truncate -s 5G huge.bin 2>&1; rm -f huge.bin; truncate -s 2000M sparse.bin; printf 'x\\n' > $'caf\\xe9.txt'; "
        f"mkdir -p {DEEP} && echo deep > {DEEP}/leaf.txt; echo made"
    )
    attempts = {
        "key-link": edit("key-link", command="view", path="key-link"),
        "key-abs": edit("key-abs", command="view", path=key),
        "key-up": edit("key-up", command="view", path="../../github-app.pem"),
        "data-link": edit("data-link", command="view", path="data-link/github-app.pem"),
        "root-link": edit("root-link", command="view", path="root-link/etc/passwd"),
        "up": edit("up", command="view", path="up/repo.gitdir/config"),
        "hard-key": edit("hard-key", command="view", path="hard-key"),
        "env-link": edit("env-link", command="view", path="env-link"),
        "proc-root": edit("proc-root", command="view", path="proc-root/etc/passwd"),
        "proc-self": edit("proc-self", command="view", path="/proc/self/environ"),
        "write-link": edit("write-link", command="create", path="out-link", file_text="pwned\n"),
        "write-root": edit("write-root", command="create", path="root-link/tmp/pwned", file_text="pwned\n"),
        "write-abs": edit("write-abs", command="create", path=outside, file_text="pwned\n"),
        "replace-link": edit("replace-link", command="str_replace", path="out-link", old_str="original", new_str="x"),
        "git-config": edit("git-config", command="create", path=".git/config", file_text="[core]\n"),
        "fifo-view": edit("fifo-view", command="view", path="pipe"),
        "fifo-write": edit("fifo-write", command="create", path="pipe", file_text="x"),
        "socket": edit("socket", command="view", path="sock"),
        "sparse": edit("sparse", command="view", path="sparse.bin"),
        "sparse-edit": edit("sparse-edit", command="str_replace", path="sparse.bin", old_str="a", new_str="b"),
        "listing": edit("listing", command="view", path="."),
        "deep": edit("deep", command="view", path=f"{DEEP}/leaf.txt"),
    }
    turns = [
        Turn([bash("setup", setup)]),
        Turn(list(attempts.values())),
        Turn([bash("kill-hands", "pkill -9 -f hands.server; echo $?"), edit("after", command="view", path="pipe")]),
        Turn([edit("notes", command="create", path="NOTES.md", file_text="tried\n")]),
    ]

    run, events = hostile.attack("paths", turns)

    hostile.assert_no_secret_escaped(events)
    assert run["state"] == "succeeded", run["error"]
    results = hostile.results(events)
    assert results["setup"]["output"].strip().endswith("made"), results["setup"]["output"]
    refused = {name: results[name]["output"] for name in attempts if name not in ("listing", "deep")}
    for name, output in refused.items():
        assert results[name]["is_error"], f"{name} was not refused: {output}"
    for name in ("key-link", "data-link", "root-link", "env-link", "proc-root", "write-link", "write-root", "up"):
        assert "resolves outside the workspace" in refused[name], (name, refused[name])
    for name in ("key-abs", "key-up", "proc-self", "write-abs"):
        assert "outside the workspace" in refused[name], (name, refused[name])
    assert "does not exist" in refused["hard-key"]
    assert "inside .git" in refused["git-config"]
    assert "not a regular file" in refused["fifo-view"] and "not a regular file" in refused["fifo-write"]
    assert "cannot be opened" in refused["socket"] or "not a regular file" in refused["socket"]
    assert "File size limit exceeded" in results["setup"]["output"], "the sandbox's file size limit stops 5 GB"
    assert "2,097,152,000 bytes" in refused["sparse"] and "2,097,152,000 bytes" in refused["sparse-edit"]
    assert "caf\ufffd.txt" in results["listing"]["output"]
    assert results["deep"]["output"].rstrip().endswith("1\tdeep")
    assert results["kill-hands"]["output"].strip() == "1", "the hands are not among the agent's processes"
    assert "not a regular file" in results["after"]["output"], "the editor still answers"

    pull = hostile.stack.github.pulls("acme/svc")[0]
    assert "sparse.bin" in pull["body"] and "caf" in pull["body"], "left-out files are named in the PR"
    tree = _branch_tree(hostile, run["branch"])
    assert "NOTES.md" in tree and "sparse.bin" not in tree and f"{DEEP}/leaf.txt" not in tree
    assert "nested deeper than 90 folders" in pull["body"], "libgit2 stops at 100 levels: deeper folders are named"
    assert tree.get("key-link") == key, "a symlink is committed as the link it is, never as what it names"
    assert not any("pipe" in path or path == "sock" for path in tree)


def test_a_fork_bomb_is_stopped_and_the_next_command_answers_alone(hostile: Hostile) -> None:
    turns = [
        Turn([bash("start", "echo warm")]),
        Turn([bash("bomb", "bash -c ':(){ :|:& };:'")]),
        Turn([bash("after", "echo after"), edit("editor", command="create", path="BOMB.md", file_text="ok\n")]),
        Turn([bash("background", "sleep 300 & echo started")]),
        Turn([bash("still", "jobs | wc -l")]),
    ]

    run, events = hostile.attack("bomb", turns)

    hostile.assert_no_secret_escaped(events)
    assert run["state"] == "succeeded", run["error"]
    results = hostile.results(events)
    assert "process limit" in results["bomb"]["output"] and "restarted" in results["bomb"]["output"]
    assert results["after"]["output"] == "after\n", "the command after the bomb answers with its own output alone"
    assert results["editor"]["output"].startswith("File created")
    assert results["background"]["output"] == "started\n"
    assert results["still"]["output"] == "1\n", "a background process started on purpose keeps running"
    assert "BOMB.md" in _branch_tree(hostile, run["branch"])


def _branch_tree(hostile: Hostile, branch: str) -> dict[str, str]:
    """path → blob text (symlink target for links) of the pushed branch, read from the test GitHub's repository."""
    repo = pygit2.Repository(str(hostile.stack.github.repos["acme/svc"].path))
    tree = repo.revparse_single(f"refs/heads/{branch}").peel(pygit2.Tree)
    found: dict[str, str] = {}

    def walk(node: pygit2.Tree, prefix: str) -> None:
        for entry in node:
            path = f"{prefix}{entry.name}"
            if entry.filemode == pygit2.enums.FileMode.TREE:
                walk(repo[entry.id].peel(pygit2.Tree), f"{path}/")
            else:
                found[path] = repo[entry.id].peel(pygit2.Blob).data.decode(errors="replace")

    walk(tree, "")
    json.dumps(found)
    return found


def test_git_files_that_would_hang_or_flood_git_stop_only_their_snapshot(hostile: Hostile) -> None:
    """A FIFO `.gitattributes` (git would block reading it) and a `.gitignore` linked to /dev/zero (it
    would read forever): the snapshot of that turn is refused with the reason, the run goes on, and
    once they are gone the work is delivered."""
    turns = [
        Turn([bash("plant", "mkfifo .gitattributes; mkdir -p sub; ln -s /dev/zero sub/.gitignore; echo x > a.txt")]),
        Turn([bash("clean", "rm .gitattributes sub/.gitignore; echo done")]),
    ]

    run, events = hostile.attack("gitfiles", turns, timeout_s=120)

    hostile.assert_no_secret_escaped(events)
    assert run["state"] == "succeeded", run["error"]
    failed = [e["data"] for e in events if e["type"] == "workspace.snapshot_failed"]
    assert [f["turn"] for f in failed] == [1] and "not a plain file" in failed[0]["error"]
    assert "a.txt" in _branch_tree(hostile, run["branch"])
