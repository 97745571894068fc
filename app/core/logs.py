"""How a process logs: one line per record on stderr, as text or as JSON (`ROUTINES_LOG_FORMAT`), with the
process's own secrets redacted, and the id of the run being worked on in every JSON line logged for it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from app.core.redact import redact_logs

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

RUN_ID: ContextVar[str | None] = ContextVar("run_id", default=None)
"""The run this task works on (set by `run_scope`): tasks started inside the scope inherit it."""


@contextmanager
def run_scope(run_id: str) -> Iterator[None]:
    """Everything logged inside the block, and by the tasks it starts, is logged for run `run_id`."""
    token = RUN_ID.set(run_id)
    try:
        yield
    finally:
        RUN_ID.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: `ts` (UTC, ISO 8601), `level`, `logger`, `message`, `run_id` when the
    record was logged for a run, and `exception` / `stack` when it has them. The message and exception
    are taken as the handler's filters left them, so redaction applies."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        run_id = getattr(record, "run_id", None) or RUN_ID.get()
        if run_id:
            line["run_id"] = str(run_id)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(log_format: str, secrets: list[tuple[str, str]]) -> None:
    """Log INFO and above to stderr in `log_format` ("text" or "json"), with `secrets` (name, value)
    redacted from every line. Handlers set up before (e.g. by `logging.basicConfig`) are the ones used."""
    logging.basicConfig(level=logging.INFO, format=TEXT_FORMAT)
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    redact_logs(secrets)
