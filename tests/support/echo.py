"""A plain stream service for relay tests: echoes everything, then, after the client's EOF, the digest of
what came, and closes — so a test sees both directions and each side's end of stream passed on."""

from __future__ import annotations

import asyncio
import hashlib


async def echo_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    digest = hashlib.sha256()
    while chunk := await reader.read(256 * 1024):
        digest.update(chunk)
        writer.write(chunk)
        await writer.drain()
    writer.write(b"END " + digest.hexdigest().encode())
    await writer.drain()
    writer.close()
