"""A run's boundary as the runner sees it: what egress refused stays bounded however the agent loops."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from app.core.domain import JSON, Routine
from app.core.redact import Redactor
from app.sandbox.boundary import DENIED_KEPT, Boundaries
from app.sandbox.bwrap import BwrapSandbox
from app.sandbox.egress.proxy import EgressLimits


async def refuse(socket: Path, host: str) -> bytes:
    """One CONNECT to `host` through the boundary's egress socket; the head of the answer."""
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return head


async def test_a_loop_of_refused_long_host_names_records_a_bounded_log(tmp_path: Path) -> None:
    events: list[tuple[str, JSON]] = []

    async def emit(kind: str, data: JSON) -> None:
        events.append((kind, data))

    boundaries = Boundaries(kind="bwrap", max_output_bytes=30_000, vault=None)
    routine = Routine(name="loop", repo="acme/api", prompt="p", network_defaults=False)
    boundary = await boundaries.open("run1", routine, tmp_path / "run", emit, Redactor())
    assert isinstance(boundary.sandbox, BwrapSandbox) and boundary.sandbox.proxy_socket is not None
    socket = boundary.sandbox.proxy_socket
    try:
        async with asyncio.timeout(60):
            for i in range(300):
                head = await refuse(socket, f"h{i}-" + "x" * 8000 + ".example")
                assert head.startswith(b"HTTP/1.1 403"), head[:100]
            for _ in range(100):
                assert (await refuse(socket, "evil.example")).startswith(b"HTTP/1.1 403")
    finally:
        await boundary.close()

    kept = EgressLimits().events_in_full  # destinations the proxy records in full
    denied = [data for kind, data in events if kind == "egress.denied"]
    assert len(denied) == kept + 1, len(denied)
    assert len(json.dumps(events)) < kept * 1024, "about a kilobyte a destination, whatever was sent"
    first = denied[0]
    assert first["port"] == 443 and first["host"].startswith("h0-xxx") and len(first["host"]) < 300
    assert first["host"].endswith("more characters cut)"), "a cut says so"
    assert "more characters cut)" in first["reason"] and len(first["reason"]) < 600
    [summary] = [d for d in denied if "omitted" in d]
    assert summary == denied[-1] and summary["host"] == "*" and summary["port"] == 0
    assert summary["omitted"] == 400 - kept, "every refusal is either recorded or counted"
    assert "were not recorded one by one" in summary["reason"]

    assert len(boundary.denied) == DENIED_KEPT + 1
    assert boundary.denied[-1]["omitted"] == 400 - DENIED_KEPT
    assert f"{400 - DENIED_KEPT} more refusals" in boundary.denied[-1]["reason"]
