"""Warm workspace preparation versus `git clone --depth 1`, both over smart HTTP on 127.0.0.1.

    python bench/workspace_prepare.py [--files 20000] [--runs 5] [--dir /tmp]

Builds a repository of small text files in nested directories, serves it with `git http-backend`,
then alternates (a) `git clone --depth 1 <url>` and (b) warm preparation: `Mirrors.ensure` on a
mirror that already exists (an incremental fetch that finds nothing new) followed by `checkout`.
Work trees are kept until the end, because deleting many files slows the next writes on some disks.

"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.git.checkouts import checkout
from app.git.mirrors import Mirrors
from app.testing.git_http import run_http_backend
from app.testing.serve import serve_in_thread


def make_repo(path: Path, files: int) -> None:
    """A bare repository with `files` small files in one commit on `main`, written by `git fast-import`."""
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    stream = [b"commit refs/heads/main\ncommitter Bench <bench@example.com> 1700000000 +0000\ndata 5\nbench\n"]
    for i in range(files):
        body = f"file {i}\n".encode() + b"a line of text in a small source file\n" * (3 + i % 7)
        name = f"src/pkg{i % 20}/mod{i // 20 % 50}/file{i}.txt"
        stream.append(b"M 100644 inline " + name.encode() + b"\ndata %d\n" % len(body) + body + b"\n")
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet"], input=b"".join(stream), check=True)
    subprocess.run(["git", "-C", str(path), "gc", "-q"], check=True)


def serve(root: Path) -> Starlette:
    async def backend(request: Request) -> Response:
        return await run_http_backend(request, root, "/" + request.path_params["path"])

    return Starlette(routes=[Route("/{path:path}", backend, methods=["GET", "POST"])])


def clone(url: str, dest: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["git", "clone", "-q", "--depth", "1", url, str(dest)], check=True)
    return time.perf_counter() - start


async def prepare(mirrors: Mirrors, url: str, dest: Path) -> float:
    """Warm preparation as a run does it; the spare work tree it uses up is replaced before the next timing."""
    start = time.perf_counter()
    mirror = await mirrors.ensure(url)
    await mirrors.checkout(mirror, "main", dest)
    elapsed = time.perf_counter() - start
    await mirrors.settle()
    return elapsed


async def fresh(mirrors: Mirrors, url: str, dest: Path) -> float:
    """Warm mirror but no spare work tree: every file written."""
    start = time.perf_counter()
    await checkout(await mirrors.ensure(url), "main", dest)
    return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-workspace-", dir=args.dir))
    try:
        start = time.perf_counter()
        make_repo(work / "served" / "repo.git", args.files)
        print(f"repository of {args.files} files built in {time.perf_counter() - start:.1f} s")
        with serve_in_thread(serve(work / "served")) as server:
            url = f"{server.url}/repo.git"
            mirrors = Mirrors(work / "cache")
            start = time.perf_counter()
            await mirrors.ensure(url)
            print(f"cold mirror (first clone, bare): {time.perf_counter() - start:.2f} s")
            await mirrors.checkout(await mirrors.ensure(url), "main", work / "runs" / "first" / "work")
            await mirrors.settle()
            clones, prepares, fresh_s = [], [], []
            for run in range(args.runs):
                clones.append(await asyncio.to_thread(clone, url, work / "clones" / str(run)))
                prepares.append(await prepare(mirrors, url, work / "runs" / str(run) / "work"))
                fresh_s.append(await fresh(mirrors, url, work / "fresh" / str(run) / "work"))
                print(
                    f"run {run + 1}: git clone --depth 1 {clones[-1]:.3f} s, warm prepare {prepares[-1]:.3f} s, "
                    f"without a spare {fresh_s[-1]:.3f} s"
                )
        clone_median, prepare_median = statistics.median(clones), statistics.median(prepares)
        print(f"median git clone --depth 1: {clone_median:.3f} s")
        print(f"median warm prepare (ensure + Mirrors.checkout, spare ready): {prepare_median:.3f} s")
        print(f"median warm prepare without a spare (ensure + checkout): {statistics.median(fresh_s):.3f} s")
        print(f"ratio clone / warm prepare: {clone_median / prepare_median:.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
