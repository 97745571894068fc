"""Run archives: a finished run's record and event log as one JSONL file, for retention and `routines export`.

The first line is `{"run": <run record>}`, then one `{"id", "type", "ts", "data"}` per event, oldest
first. Retention (`archive_old_runs`, a worker's periodic task when ROUTINES_RETENTION_DAYS is set)
writes the file under the archive folder (`<YYYY>/<MM>/<run id>.jsonl` by creation date), then keeps
only the run's record in Redis, marked `archived` with the file's path; its event stream is deleted.
Files are written to a temporary name and renamed, so a reader never sees half a file. The console and
the API read an archived run's events from its file: web processes and workers must share the folder
(a volume) for that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from app.core.domain import Event, Run
from app.core.errors import StoreError
from app.store.runs import RedisStore

log = logging.getLogger(__name__)

BATCH = 200


def to_jsonl(run: Run, events: Iterable[Event]) -> str:
    lines = [json.dumps({"run": run.to_json()})]
    lines += [json.dumps(event.to_json()) for event in events]
    return "\n".join(lines) + "\n"


def read_jsonl(path: Path) -> tuple[Run, list[Event]]:
    """The run and its events from an archive file (StoreError when it is missing or not one)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        head = json.loads(lines[0])
        run = Run.from_json(head["run"])
        events = [
            Event(type=e["type"], data=e["data"], ts=float(e["ts"]), id=str(e.get("id") or ""))
            for e in (json.loads(line) for line in lines[1:] if line.strip())
        ]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        where = "is ROUTINES_ARCHIVE_DIR a folder the workers share with this process?"
        raise StoreError(f"cannot read the archive {path} ({exc}); {where}") from None
    return run, events


class RunArchive:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, run: Run) -> Path:
        made = datetime.fromtimestamp(run.created_at, UTC)
        return self.directory / f"{made:%Y}" / f"{made:%m}" / f"{run.id}.jsonl"

    def write(self, run: Run, events: Iterable[Event]) -> Path:
        path = self.path_for(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        partial.write_text(to_jsonl(run, events), encoding="utf-8")
        os.replace(partial, path)
        return path


async def run_events(store: RedisStore, run: Run) -> list[Event]:
    """A run's events, from Redis, or from its archive once retention moved them there."""
    if run.archived:
        return (await asyncio.to_thread(read_jsonl, Path(run.archived)))[1]
    return await store.events(run.id)


async def archive_old_runs(store: RedisStore, archive: RunArchive, *, days: float, now: float | None = None) -> int:
    """Export and trim the finished runs created more than `days` ago (at most BATCH per call); how many."""
    cutoff = ((time.time() if now is None else now) - days * 86400) * 1000
    ids = await store.redis.zrangebyscore(store.key("runs"), "-inf", cutoff, start=0, num=BATCH * 5)
    done = 0
    for raw_id in ids:
        if done >= BATCH:
            break
        run = await store.get_run(raw_id.decode())
        if run.archived or not run.state.terminal:
            continue
        if not await store.redis.set(store.key("archiving", run.id), "1", nx=True, ex=600):
            continue  # another worker is on it
        events = await store.events(run.id)
        path = await asyncio.to_thread(archive.write, run, events)
        await store.mark_archived(run.id, str(path))
        done += 1
    if done:
        log.info("retention: %d runs older than %g days exported to %s and trimmed", done, days, archive.directory)
    return done
