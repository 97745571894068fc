"""Workspace preparation versus `git clone --depth 1`, both over smart HTTP on 127.0.0.1.

    python bench/workspace_prepare.py [--files 20000] [--cold-files 50000] [--runs 3] [--moves 0,1,10,50]

Warm: a repository of `--files` small files whose mirror and spare work tree exist. Each round moves
the served `main` by N commits (N in `--moves`; together they touch 1% of the files: edits, renames,
deletions, new files), then times, in alternating order, `git clone --depth 1` of it and a run's
preparation: `Mirrors.ensure` (the fetch) and `Mirrors.checkout` (the spare, brought forward by the
difference). N = 0 is the base that did not move.

Cold: a repository of `--cold-files` files with some history, and no mirror yet. Alternates
`git clone --depth 1` (which checks out) with a first preparation on an empty data directory
(a shallow clone of the default branch, then the checkout); what a preparation leaves in the
background (the rest of the history, a spare work tree) is waited for outside the timing.

Medians of `--runs` rounds; the ratio is clone time over preparation time for warm (higher is
better) and preparation over clone for cold (lower is better). Work trees are kept until the end,
because deleting many files slows the next writes on some disks.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.git.mirrors import Mirrors
from app.testing.git_http import run_http_backend
from app.testing.serve import serve_in_thread

COMMITTER = b"committer Bench <bench@example.com> %d +0000\n"


def body(i: int, version: int = 0) -> bytes:
    return f"file {i} version {version}\n".encode() + b"a line of text in a small source file\n" * (3 + i % 7)


def name(i: int) -> str:
    return f"src/pkg{i % 20}/mod{i // 20 % 50}/file{i}.txt"


class Upstream:
    """A served bare repository of small files on `main`, moved forward with `git fast-import`."""

    def __init__(self, path: Path, files: int) -> None:
        self.path = path
        self.paths = [name(i) for i in range(files)]
        self.clock = 1_700_000_000
        self.rng = random.Random(files)
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
        stream = [b"commit refs/heads/main\n" + COMMITTER % self.clock + b"data 5\nbench\n"]
        for i, path_name in enumerate(self.paths):
            stream.append(_modify(path_name, body(i)))
        self._import(stream)
        subprocess.run(["git", "-C", str(path), "gc", "-q"], check=True)

    def move(self, commits: int, touched: int) -> None:
        """Add `commits` commits on `main` that together touch `touched` files."""
        stream: list[bytes] = []
        for n in range(commits):
            self.clock += 1
            stream.append(b"commit refs/heads/main\n" + COMMITTER % self.clock + b"data 5\nmove\n")
            if n == 0:
                stream.append(b"from refs/heads/main^0\n")
            for k in range(max(1, touched // commits)):
                stream.append(self._change(k))
        self._import(stream)

    def _change(self, k: int) -> bytes:
        """Mostly edits; every 10th a rename, every 20th a deletion paired with a new file."""
        at = self.rng.randrange(len(self.paths))
        old = self.paths[at]
        if k % 10 == 9:
            self.paths[at] = old.replace(".txt", f".r{self.clock}.txt")
            return f"R {old} {self.paths[at]}\n".encode()
        if k % 20 == 19:
            self.paths[at] = f"src/new/{self.clock}-{k}.txt"
            return f"D {old}\n".encode() + _modify(self.paths[at], body(at, self.clock))
        return _modify(old, body(at, self.clock))

    def _import(self, stream: list[bytes]) -> None:
        subprocess.run(["git", "-C", str(self.path), "fast-import", "--quiet"], input=b"".join(stream), check=True)

    def head(self) -> str:
        done = subprocess.run(["git", "-C", str(self.path), "rev-parse", "main"], check=True, capture_output=True)
        return done.stdout.decode().strip()


def _modify(path_name: str, data: bytes) -> bytes:
    return b"M 100644 inline " + path_name.encode() + b"\ndata %d\n" % len(data) + data + b"\n"


def serve(root: Path) -> Starlette:
    async def backend(request: Request) -> Response:
        return await run_http_backend(request, root, "/" + request.path_params["path"])

    return Starlette(routes=[Route("/{path:path}", backend, methods=["GET", "POST"])])


async def clone(url: str, dest: Path) -> float:
    start = time.perf_counter()
    await asyncio.to_thread(subprocess.run, ["git", "clone", "-q", "--depth", "1", url, str(dest)], check=True)
    return time.perf_counter() - start


async def prepare(mirrors: Mirrors, url: str, dest: Path, head: str) -> float:
    """A run's preparation, timed; then what it started in the background is waited for, untimed."""
    start = time.perf_counter()
    workspace = await mirrors.checkout(await mirrors.ensure(url), "main", dest)
    elapsed = time.perf_counter() - start
    if workspace.base_commit != head:
        raise SystemExit(f"prepared {workspace.base_commit}, expected {head}")
    await mirrors.settle()
    return elapsed


async def alternate(
    first: Callable[[], Awaitable[float]], second: Callable[[], Awaitable[float]], flip: bool
) -> tuple[float, float]:
    """Both timings, the order flipped every other round."""
    if flip:
        b = await second()
        return await first(), b
    a = await first()
    return a, await second()


def report(title: str, clones: list[float], ours: list[float], *, cold: bool) -> str:
    clone_s, ours_s = statistics.median(clones), statistics.median(ours)
    ratio = f"{ours_s / clone_s:.2f}x of the clone" if cold else f"{clone_s / ours_s:.1f}x faster"
    return f"{title:<34} clone {clone_s:6.3f} s   ours {ours_s:6.3f} s   {ratio}"


async def warm(work: Path, files: int, moves: list[int], runs: int) -> list[str]:
    upstream = Upstream(work / "served" / "warm.git", files)
    touched = files // 100
    lines = []
    with serve_in_thread(serve(work / "served")) as server:
        url = f"{server.url}/warm.git"
        mirrors = Mirrors(work / "data")
        await prepare(mirrors, url, work / "runs" / "first", upstream.head())
        await mirrors.settle()
        results: dict[int, tuple[list[float], list[float]]] = {n: ([], []) for n in moves}
        for run in range(runs):
            for i, n in enumerate(moves[run % len(moves) :] + moves[: run % len(moves)]):
                if n:
                    upstream.move(n, touched)
                head, where = upstream.head(), work / f"{n}-{run}"
                clone_s, ours_s = await alternate(
                    partial(clone, url, where / "clone"),
                    partial(prepare, mirrors, url, where / "run", head),
                    flip=(run + i) % 2 == 1,
                )
                results[n][0].append(clone_s)
                results[n][1].append(ours_s)
                print(f"  warm, moved by {n:>2}: clone {clone_s:.3f} s, ours {ours_s:.3f} s", flush=True)
        for n in moves:
            lines.append(report(f"{files} files, base moved by {n}", *results[n], cold=False))
    return lines


async def cold(work: Path, files: int, runs: int) -> list[str]:
    upstream = Upstream(work / "served" / "cold.git", files)
    upstream.move(50, files // 20)
    clones, ours = [], []
    with serve_in_thread(serve(work / "served")) as server:
        url = f"{server.url}/cold.git"
        for run in range(runs):
            where = work / f"cold-{run}"
            mirrors = Mirrors(where / "data")
            clone_s, ours_s = await alternate(
                partial(clone, url, where / "clone"),
                partial(prepare, mirrors, url, where / "run", upstream.head()),
                flip=run % 2 == 1,
            )
            clones.append(clone_s)
            ours.append(ours_s)
            print(f"  cold: clone {clone_s:.3f} s, ours {ours_s:.3f} s", flush=True)
    return [report(f"{files} files, first run (cold)", clones, ours, cold=True)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--cold-files", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--moves", default="0,1,10,50", help="commits the base moves by, per warm case")
    parser.add_argument("--skip", choices=["warm", "cold"], default=None)
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-workspace-", dir=args.dir))
    try:
        lines = []
        if args.skip != "warm":
            lines += await warm(work, args.files, [int(n) for n in args.moves.split(",")], args.runs)
        if args.skip != "cold":
            lines += await cold(work, args.cold_files, args.runs)
        print(f"medians of {args.runs} rounds, each against git clone --depth 1 over the same server:")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
