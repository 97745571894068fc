"""Cancel flags in Redis: a request is seen by the check the runner polls before each turn."""

from __future__ import annotations

from redis import asyncio as aioredis

from app.store.cancels import CancelFlags


async def test_a_cancel_flag_is_seen_by_the_check_the_runner_polls(aredis: aioredis.Redis) -> None:
    flags = CancelFlags(aredis)
    check = flags.check("r1")
    assert await check() is False
    await flags.request("r1")
    assert await check() is True and await flags.requested("r2") is False
    assert 0 < await aredis.ttl("routines:cancel:r1") <= 86400
