"""A process the agent leaves running swaps a workspace file for a symlink to a host secret, as fast as it
can, while the model views and writes that file hundreds of times through the editor.

With the editor on the host (before: resolve, check, then open in the worker), some views returned
the App's private key and some writes landed on host files. With the editor inside the sandbox, a
symlink resolves to what the sandbox sees, which holds neither.
"""

from __future__ import annotations

from app.testing.anthropic_server import Turn
from tests.security.conftest import Hostile, bash, edit

VIEWS = 300
WRITES = 60
SWAPPER = """import os, sys
name, target = sys.argv[1], sys.argv[2]
while True:
    try:
        os.symlink(target, name + ".link")
        os.rename(name + ".link", name)
        with open(name + ".tmp", "w") as f:
            f.write("decoy\\n")
        os.rename(name + ".tmp", name)
    except OSError:
        pass
"""
REFUSALS = {
    "resolves outside the workspace",
    "does not exist",
    "cannot be opened (Too many levels of symbolic links)",
    "changed while it was resolved (Invalid argument)",
}


def start_swappers(pairs: dict[str, str]) -> str:
    """A bash command that starts one swapper per (file, symlink target) and leaves them running."""
    script = f"cat > /tmp/swap.py <<'PY'\n{SWAPPER}PY\n"
    starts = "".join(f"nohup python3 /tmp/swap.py {a} {b} >/dev/null 2>&1 &\n" for a, b in pairs.items())
    return script + starts + "sleep 0.3; echo racing"


def test_hundreds_of_views_and_writes_against_a_symlink_race_reach_no_host_file(hostile: Hostile) -> None:
    key, outside = str(hostile.key_file), str(hostile.outside)
    views = [f"view-{n}" for n in range(VIEWS)]
    writes = [f"create-{n}" for n in range(WRITES)]
    replaces = [f"replace-{n}" for n in range(WRITES)]
    calls = [
        bash("start", start_swappers({"read-me": key, "write-me": outside, "edit-me": outside})),
        *[edit(id, command="view", path="read-me") for id in views],
        *[edit(id, command="create", path="write-me", file_text="pwned\n") for id in writes],
        *[edit(id, command="str_replace", path="edit-me", old_str="decoy", new_str="pwned") for id in replaces],
        bash("stop", "pkill -f swap.py; sleep 0.2; rm -f read-me* write-me* edit-me*; echo stopped"),
    ]
    # One turn: the swappers run only while its calls do, and are gone before the turn's checkpoint.
    run, events = hostile.attack("race", [Turn(calls)])

    hostile.assert_no_secret_escaped(events)
    assert run["state"] in ("no_changes", "succeeded"), run["error"]
    results = hostile.results(events)
    assert results["start"]["output"].strip() == "racing"
    outputs = [results[id] for id in views]
    saw_decoy = sum("decoy" in r["output"] for r in outputs if not r["is_error"])
    refused = [r["output"] for r in outputs if r["is_error"]]
    assert saw_decoy + len(refused) == VIEWS, "every view saw the decoy file or was refused"
    assert saw_decoy > 0 and refused, "the race ran against the editor: both states were seen"
    reasons = {text.split(";")[0].split(" ", 2)[-1] for text in refused}
    assert reasons <= REFUSALS, reasons
