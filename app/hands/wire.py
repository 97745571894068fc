"""Frames between the worker and the hands process: a 4-byte big-endian length, then that many bytes.

A request is one JSON frame. An answer is one JSON frame, followed by as many raw frames as it
announces (the git objects of an `objects` request).
"""

from __future__ import annotations

import json
import struct
from typing import IO, Any

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 512 * 1024 * 1024


class WireError(Exception):
    """The other side broke the framing (a length over the limit, or the stream ended mid-frame)."""


def frame(payload: bytes) -> bytes:
    """`payload` with its length in front."""
    if len(payload) > MAX_FRAME_BYTES:
        raise WireError(f"a frame of {len(payload)} bytes is over the {MAX_FRAME_BYTES} byte limit")
    return HEADER.pack(len(payload)) + payload


def dump(message: dict[str, Any]) -> bytes:
    """A JSON message as a frame; text that is not valid Unicode (lone surrogates) is escaped by json."""
    return frame(json.dumps(message, separators=(",", ":")).encode())


def read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame's payload, or None when the stream ended cleanly before a frame."""
    head = _read_exactly(stream, HEADER.size, allow_eof=True)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME_BYTES:
        raise WireError(f"a frame announced {size} bytes, over the {MAX_FRAME_BYTES} byte limit")
    data = _read_exactly(stream, size, allow_eof=False)
    return data if data is not None else b""


def _read_exactly(stream: IO[bytes], size: int, *, allow_eof: bool) -> bytes | None:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = stream.read(left)
        if not chunk:
            if allow_eof and left == size:
                return None
            raise WireError(f"the stream ended {left} bytes before the end of a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
