"""The hands process: answers the worker's requests, one at a time, over stdin and stdout.

Started as `python -I -S -B -c <bootstrap> CONFIG` where CONFIG is JSON: `workspace` (the work
tree), `root` (how the model names it), `gitdir` (a private folder for staging), `alternates`
(the mirror's object folders) and `rlimits` (e.g. {"as": bytes, "fsize": bytes}, set first).
Requests are `wire` frames of JSON; `frames: n` announces n raw frames that follow (a seed index):

- `{"op": "ping"}` → `{"ok": true}`
- `{"op": "edit", "params": {...}, "max_characters": n|null}` → `{"ok": true, "output": "..."}`
- `{"op": "stage", "base": oid, "max_file_bytes": n, "max_total_bytes": n, "max_files": n, "frames": 0|1}`
  → `{"ok": true, "tree": oid, "files": n, "skipped": [...]}`
- `{"op": "objects", "oids": [...], "max_bytes": n}` → `{"ok": true, "objects": [[oid, type, size], ...]}` + a
  frame each
- `{"op": "names"}` → `{"ok": true, "names": [...]}`; `{"op": "pack", "created": [...], "max_bytes": n}` →
  `{"ok": true, "files": n, "bytes": n}`; `{"op": "unpack"}` → `{"ok": true, "files": n}` (stash.py; they need
  the config's `home` and `exchange`); `{"op": "ignore", "names": [...]}` → `{"ok": true}` (never staged)

A refused request answers `{"ok": false, "error": "..."}` and the process goes on; a broken frame ends it.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from typing import TYPE_CHECKING, Any

from .editor import Editor, EditorError
from .wire import dump, frame, read_frame

if TYPE_CHECKING:
    from .stage import Stager


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    for name, value in (config.get("rlimits") or {}).items():
        kind = getattr(resource, f"RLIMIT_{name.upper()}")
        hard = resource.getrlimit(kind)[1]
        limit = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (limit, limit))
    # Writes past RLIMIT_FSIZE must fail with EFBIG (a tool error), not kill this process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print from a library must not break the framing
    stdin = sys.stdin.buffer
    hands = Hands(config)
    while True:
        payload = read_frame(stdin)
        if payload is None:
            return 0
        request = json.loads(payload)
        extra = [read_frame(stdin) or b"" for _ in range(int(request.get("frames") or 0))]
        answer, frames = hands.handle(request, extra)
        out.write(dump(answer) + b"".join(frame(f) for f in frames))
        out.flush()


class Hands:
    """What the process keeps between requests: the editor and, once staging is asked for, the stager."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.editor = Editor(config["workspace"], root=config.get("root"))
        self._stager: Stager | None = None

    def handle(self, request: dict[str, Any], extra: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        """The answer to one request and the raw frames that follow it."""
        op = request.get("op")
        try:
            if op == "ping":
                return {"ok": True, "pid": os.getpid()}, []
            if op == "edit":
                self.editor.max_characters = request.get("max_characters")
                return {"ok": True, "output": self.editor.run(dict(request.get("params") or {}))}, []
            if op == "stage":
                limits = {k: int(request[k]) for k in ("max_file_bytes", "max_total_bytes", "max_files")}
                staged = self.stager().stage(str(request["base"]), seed=extra[0] if extra else None, **limits)
                return {"ok": True, **staged}, []
            if op == "ignore":
                self.stager().ignore([str(name) for name in request.get("names") or []])
                return {"ok": True}, []
            if op in ("names", "pack", "unpack"):
                return {"ok": True, **self.stash(op, request)}, []
            if op == "objects":
                found = self.stager().objects([str(o) for o in request.get("oids") or []], int(request["max_bytes"]))
                return {"ok": True, "objects": [[oid, kind, len(data)] for oid, kind, data in found]}, [
                    data for _, _, data in found
                ]
        except EditorError as exc:
            return {"ok": False, "error": str(exc)}, []
        except Exception as exc:  # the worker turns this into a clear error; this process goes on
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, []
        return {"ok": False, "error": f"unknown op {op!r}"}, []

    def stash(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        """The setup cache's ops (see stash.py); they need the config's `home` and `exchange` folders."""
        from . import stash

        workspace = self.config["workspace"]
        if op == "names":
            return {"names": stash.names(workspace)}
        home, exchange = self.config.get("home"), self.config.get("exchange")
        if not home or not exchange:
            raise ValueError("this sandbox keeps no setup (no home or exchange folder)")
        if op == "pack":
            created = [str(name) for name in request["created"]]
            return stash.pack(workspace, home, exchange, created, int(request["max_bytes"]))
        return stash.unpack(workspace, home, exchange)

    def stager(self) -> Stager:
        if self._stager is None:
            import pygit2  # only when staging is asked for: it costs the editor's start ~50 ms

            from .stage import Stager

            levels = pygit2.enums.ConfigLevel
            for level in (levels.SYSTEM, levels.XDG, levels.GLOBAL):
                pygit2.settings.search_path[level] = "/nonexistent"
            pygit2.settings.mwindow_mapped_limit = 512 * 1024 * 1024
            # A seed index can name objects only the worker has (a restored checkpoint's): that is fine,
            # the worker never asks for what it has.
            pygit2.settings.enable_strict_object_creation(False)
            self._stager = Stager(self.config["workspace"], self.config["gitdir"], list(self.config["alternates"]))
        return self._stager
