"""What one run's egress proxy records: bounded, whatever the agent sends.

Every string in an event is cut short (a host name to 253 characters, the longest a DNS name can be;
anything else to `TEXT_CHARS`), and the cut says how much it left out. Refusals, errors and requests
let through are coalesced by destination (host and port), so varying a method or a reason adds
nothing: the first event for each of `in_full` destinations of each type is recorded as it happens;
repeats and further destinations are only counted, and a summary event of the same type (host `*`,
port 0, `omitted`: the count) reports them at most every `summary_every_s` while they keep coming,
and once more at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from app.core.domain import JSON
from app.core.ports import Emit

log = logging.getLogger(__name__)
HOST_CHARS = 253
TEXT_CHARS = 512
COALESCED = ("egress.denied", "egress.error", "egress.allowed")  # an agent can repeat any of them in a loop
_NOUN = {"egress.denied": "refusals", "egress.error": "errors", "egress.allowed": "requests let through"}


def clip(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and a note of how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters cut)"


def clipped(data: JSON) -> JSON:
    """`data` with each string value (and each string in a list) cut short."""
    out: JSON = {}
    for key, value in data.items():
        limit = HOST_CHARS if key == "host" else TEXT_CHARS
        if isinstance(value, str):
            out[key] = clip(value, limit)
        elif isinstance(value, list):
            out[key] = [clip(v, limit) if isinstance(v, str) else v for v in value]
        else:
            out[key] = value
    return out


class Ledger:
    """The proxy's event sink: passes events to `emit`, bounded as the module says. Never raises: a
    failing sink must not break the sandbox's network."""

    def __init__(
        self,
        emit: Emit | None,
        *,
        in_full: int = 200,
        summary_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emit = emit
        self.in_full = in_full
        self.summary_every_s = summary_every_s
        self.clock = clock
        self._recorded: dict[str, set[str]] = {kind: set() for kind in COALESCED}
        self._omitted: dict[str, int] = dict.fromkeys(COALESCED, 0)
        self._summarized_at = clock()

    async def record(self, type_: str, data: JSON) -> None:
        """Record the event `type_` with `data`, or count it towards the next summary."""
        data = clipped(data)
        recorded = self._recorded.get(type_)
        if recorded is not None:
            key = f"{data.get('host')}:{data.get('port')}"  # by destination: varying a method or a reason adds none
            if key in recorded or len(recorded) >= self.in_full:
                self._omitted[type_] += 1
                if self.clock() - self._summarized_at >= self.summary_every_s:
                    await self.summarize()
                return
            recorded.add(key)
        await self._send(type_, data)

    async def summarize(self) -> None:
        """Report what was counted but not recorded since the last summary (nothing when nothing was)."""
        self._summarized_at = self.clock()
        for type_, count in self._omitted.items():
            if not count:
                continue
            self._omitted[type_] = 0
            noun = _NOUN[type_]
            reason = (
                f"{count} more {noun} were not recorded one by one: repeats, and any past the first "
                f"{self.in_full} distinct {noun} of the run, are only counted"
            )
            await self._send(type_, {"host": "*", "port": 0, "reason": reason, "omitted": count})

    async def _send(self, type_: str, data: JSON) -> None:
        if self.emit is None:
            return
        try:
            await self.emit(type_, data)
        except Exception:
            log.exception("egress event %s could not be recorded", type_)
