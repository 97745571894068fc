from __future__ import annotations

import asyncio

import pytest
from redis import asyncio as aioredis

from app.core.domain import Event, Run, RunState, Trigger, new_run_id
from app.core.errors import InvalidTransition, RunNotFound, StoreError
from app.store.runs import RedisStore


def make_run(routine: str = "fix") -> Run:
    return Run(id=new_run_id(), routine=routine, repo="acme/api", trigger=Trigger("api", text="hi"))


async def test_run_round_trip_and_state_machine(aredis: aioredis.Redis) -> None:
    store = RedisStore(aredis)
    run = make_run()
    await store.create_run(run)
    assert (await store.get_run(run.id)).trigger.text == "hi"
    await store.transition(run.id, RunState.PREPARING)
    with pytest.raises(InvalidTransition):
        await store.transition(run.id, RunState.SUCCEEDED)
    await store.transition(run.id, RunState.RUNNING)
    await store.transition(run.id, RunState.FINISHING)
    done = await store.transition(run.id, RunState.NO_CHANGES, summary="nothing to do")
    assert done.state is RunState.NO_CHANGES and done.summary == "nothing to do"
    with pytest.raises(InvalidTransition):
        await store.transition(run.id, RunState.FAILED)
    states = [e.data["state"] for e in await store.events(run.id) if e.type == "run.state"]
    assert states == ["queued", "preparing", "running", "finishing", "no_changes"]


async def test_a_run_and_each_move_are_written_with_their_state_event_in_one_transaction(redis_url: str) -> None:
    """Whoever reads the record in a state finds its `run.state` event in the log (and a crash between the
    two cannot leave one without the other): the event is in the MULTI/EXEC that writes the record. MONITOR
    sees every client of the server: only the store's own connection is read."""
    client = aioredis.Redis.from_url(redis_url, max_connections=1)  # every command of the store on one connection
    watcher = aioredis.Redis.from_url(redis_url)
    store = RedisStore(client)
    run = make_run()
    try:
        own = str((await client.client_info())["addr"]).rsplit(":", 1)[1]
        async with watcher.monitor() as monitor:
            seen: list[str] = []

            async def until_exec_count(n: int) -> None:
                while seen.count("EXEC") < n:
                    command = await monitor.next_command()
                    if str(command["client_port"]) == own:
                        seen.append(str(command["command"]).split(" ")[0].upper())

            await store.create_run(run)
            await store.transition(run.id, RunState.PREPARING)
            await asyncio.wait_for(until_exec_count(2), 10)
        assert [e.data["state"] for e in await store.events(run.id)] == ["queued", "preparing"]
    finally:
        await watcher.aclose()
        await client.aclose()
    for begin in (i for i, c in enumerate(seen) if c == "MULTI"):
        end = seen.index("EXEC", begin)
        assert "SET" in seen[begin:end] and "XADD" in seen[begin:end], seen


async def test_missing_run_says_so(aredis: aioredis.Redis) -> None:
    with pytest.raises(RunNotFound, match="does not exist"):
        await RedisStore(aredis).get_run("nope")


async def test_follow_reads_live_events_until_terminal(aredis: aioredis.Redis) -> None:
    store = RedisStore(aredis)
    run = make_run()
    await store.create_run(run)
    seen: list[str] = []

    async def reader() -> None:
        async for event in store.follow(run.id):
            seen.append(event.type)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.05)
    await store.append_event(run.id, Event("log", {"n": 1}))
    await store.transition(run.id, RunState.FAILED, error="boom")
    await asyncio.wait_for(task, timeout=5)
    assert seen == ["run.state", "log", "run.state"]
    after_first = (await store.events(run.id))[0].id
    assert [e.type for e in await store.events(run.id, after=after_first)] == ["log", "run.state"]


async def test_list_runs_newest_first_filtered_and_paginated(aredis: aioredis.Redis) -> None:
    store = RedisStore(aredis)
    ids = []
    for i in range(5):
        run = make_run("a" if i % 2 == 0 else "b")
        run.created_at += i
        await store.create_run(run)
        ids.append(run.id)
    await store.transition(ids[4], RunState.CANCELLED)
    all_runs = await store.list_runs()
    assert [r.id for r in all_runs] == ids[::-1]
    assert [r.id for r in await store.list_runs(routine="a")] == [ids[4], ids[2], ids[0]]
    assert [r.id for r in await store.list_runs(state="cancelled")] == [ids[4]]
    page = await store.list_runs(limit=2)
    rest = await store.list_runs(limit=10, before=page[-1].id)
    assert [r.id for r in page + rest] == ids[::-1]


async def test_routine_tokens_rotate_and_are_stored_hashed(aredis: aioredis.Redis) -> None:
    store = RedisStore(aredis)
    repos = ("acme/app",)
    first = await store.new_routine_token("fix", repos)
    assert await store.check_routine_token("fix", first, repos)
    second = await store.new_routine_token("fix", repos)
    assert not await store.check_routine_token("fix", first, repos)
    assert await store.check_routine_token("fix", second, repos)
    assert not await store.check_routine_token("other", second, repos)
    assert await store.check_routine_token("fix", second, ("Acme/App",))
    assert not await store.check_routine_token("fix", second, ("acme/app", "acme/other"))
    raw = await aredis.get("routines:token:fix")
    assert raw is not None and second.encode() not in raw


async def test_dead_redis_gives_a_clear_error() -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    with pytest.raises(StoreError, match="Redis"):
        await RedisStore(client).ping()
    with pytest.raises(StoreError, match="could not record run"):
        await RedisStore(client).create_run(make_run())
    await client.aclose()


async def test_pages_of_runs_follow_each_other_without_gaps_even_within_one_millisecond(
    aredis: aioredis.Redis,
) -> None:
    store = RedisStore(aredis)
    made = []
    for n in range(120):
        at = 1_700_000_000 + (n // 3)  # three runs per second, several per millisecond
        run = Run(id=f"{n:04d}", routine="r", repo=f"acme/{'api' if n % 2 else 'web'}", trigger=Trigger("api"))
        run.created_at = at
        await store.create_run(run)
        made.append(run.id)
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await store.page_runs(limit=25, before=cursor)
        seen += [r.id for r in page]
        if cursor is None or not page:
            break
    assert seen == sorted(made, reverse=True), "newest first, each run exactly once"
    api, _ = await store.page_runs(repo="acme/api", limit=100)
    assert [r.id for r in api] == [i for i in sorted(made, reverse=True) if int(i) % 2]


async def test_a_rare_filter_reads_a_bounded_number_of_runs_per_page(aredis: aioredis.Redis) -> None:
    store = RedisStore(aredis)
    for n in range(300):
        await store.create_run(Run(id=f"{n:04d}", routine="r", repo="acme/api", trigger=Trigger("api")))
    page, cursor = await store.page_runs(state="failed", limit=10, scan=100)
    assert page == [] and cursor is not None, "nothing in the first 100: the page says where to go on"
    page, cursor = await store.page_runs(state="failed", limit=10, before=cursor, scan=1000)
    assert page == [] and cursor is None
