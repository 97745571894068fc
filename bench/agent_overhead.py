"""What the agent loop costs per turn besides the model, how fast events go into Redis, and the cache share.

    python bench/agent_overhead.py [--turns 100] [--runs 5] [--events 5000] [--redis redis://127.0.0.1:6379/11]

1. Loop overhead per turn (target ≤ 10 ms p50): the time from the model's answer to the next request,
   model time excluded (an instant ScriptedModel; tools answer from an in-process shell with 2 KB of
   output). Measured with an in-memory event sink and with the real RedisStore behind the runner's
   RunEvents (redaction included). Baseline: a bare loop that appends the same messages and calls
   the same model, with no tools, events, limits or context handling.
2. Events appended per second through RedisStore.append_event, one run at a time and 8 runs at
   once. Baseline: a bare XADD of the same fields with the same client.
3. Prompt caching: a 20-turn run against the Anthropic test server (cache reads accounted by prefix
   like the API) through the real AnthropicModel: the share of input tokens read from the cache
   after turn 1, and the run's cost against the same usage without a cache.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis import asyncio as aioredis

from app.agent.context import cache_read_share, prompt_tokens
from app.agent.loop import Agent, Budget
from app.agent.prompts import build_system
from app.agent.tools.toolbox import Toolbox
from app.core.domain import JSON, Event, Routine
from app.core.ports import CommandResult, EventSink, ModelResponse, Staged, StageLimits
from app.core.pricing import cost_usd
from app.core.redact import Redactor
from app.models.anthropic import AnthropicModel
from app.models.scripted import ScriptedModel
from app.run.context import RunEvents
from app.store.runs import RedisStore
from app.testing.anthropic_server import AnthropicState, Script, Turn, bash, create_app, text
from app.testing.serve import serve_in_thread

OUTPUT = "\n".join(f"{n:>6}  some line of a file or of a test run's output" for n in range(40))  # ~2 KB
SYSTEM: list[JSON] = [
    {"type": "text", "text": "You are a coding agent. " * 200, "cache_control": {"type": "ephemeral"}}
]


class InstantHands:
    """Hands that answer at once with a fixed output: tool time is not what is measured."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    async def run(self, command: str, timeout_s: float) -> CommandResult:
        return CommandResult(OUTPUT, 0)

    async def edit(self, params: JSON, max_characters: int | None = None) -> str:
        return OUTPUT

    async def stage(self, base: str, seed: bytes | None, limits: StageLimits) -> Staged:
        return Staged(base)

    async def objects(self, oids: list[str], max_bytes: int, budget: int) -> list[tuple[str, int, bytes]]:
        return []

    async def restart(self) -> None: ...

    async def stop(self) -> None: ...

    async def names(self) -> list[str]:
        return []

    async def pack(self, created: list[str], max_bytes: int) -> int:
        return 0

    async def unpack(self) -> int:
        return 0

    async def ignore(self, names: list[str]) -> None: ...

    async def close(self) -> None: ...


class MemorySink:
    def __init__(self) -> None:
        self.events: list[tuple[str, JSON]] = []

    async def emit(self, type: str, data: JSON) -> None:
        self.events.append((type, data))


class TimedModel:
    """Wraps a ModelClient and records when each request started and ended."""

    def __init__(self, inner: ScriptedModel) -> None:
        self.inner = inner
        self.spans: list[tuple[float, float]] = []

    async def create(self, **request: Any) -> ModelResponse:
        start = time.perf_counter()
        response = await self.inner.create(**request)
        self.spans.append((start, time.perf_counter()))
        return response

    def gaps(self) -> list[float]:
        """The time between one answer and the next request: the loop's own work."""
        return [self.spans[i + 1][0] - self.spans[i][1] for i in range(len(self.spans) - 1)]


def script(turns: int) -> Script:
    calls = [Turn([text(f"Step {n}."), bash(f"cat file{n}.py")]) for n in range(turns - 1)]
    return Script([*calls, Turn([text("Done.")])])


async def agent_gaps(turns: int, sink: EventSink) -> list[float]:
    model = TimedModel(ScriptedModel(script(turns)))
    toolbox = Toolbox(["bash", "edit"], hands=InstantHands(Path(tempfile.gettempdir())))
    agent = Agent(model, toolbox, sink, Budget("claude-sonnet-4-6", turns + 1, 60, 1000, price=cost_usd))
    outcome = await agent.run(SYSTEM, "Run the routine now.")
    if outcome.error or outcome.turns != turns:
        raise SystemExit(f"the benchmark run did not finish: {outcome.error}")
    return model.gaps()


async def bare_gaps(turns: int) -> list[float]:
    """The baseline: call the model, append its turn and a canned result, repeat."""
    model = TimedModel(ScriptedModel(script(turns)))
    messages: list[JSON] = [{"role": "user", "content": "Run the routine now."}]
    for _ in range(turns):
        response = await model.create(model="m", system=SYSTEM, messages=messages, tools=[], max_tokens=8192)
        if response.stop_reason != "tool_use":
            break
        messages.append({"role": "assistant", "content": response.content})
        call = response.content[-1]
        result = {"type": "tool_result", "tool_use_id": call["id"], "content": OUTPUT, "is_error": False}
        messages.append({"role": "user", "content": [result]})
    return model.gaps()


def p50_p99(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return statistics.median(samples) * 1000, cuts[98] * 1000


async def repeated(runs: int, measure: Callable[[], Awaitable[list[float]]]) -> list[float]:
    await measure()
    samples: list[float] = []
    for _ in range(runs):
        samples += await measure()
    return samples


async def loop_overhead(args: argparse.Namespace, store: RedisStore) -> None:
    print(f"1. loop overhead per turn, model time excluded ({args.runs} runs × {args.turns} turns)")
    bare = await repeated(args.runs, lambda: bare_gaps(args.turns))
    memory = await repeated(args.runs, lambda: agent_gaps(args.turns, MemorySink()))
    counter = iter(range(1_000_000))
    redis = await repeated(
        args.runs, lambda: agent_gaps(args.turns, RunEvents(store, f"bench-{next(counter)}", Redactor()))
    )
    b50, b99 = p50_p99(bare)
    for label, samples in (("agent, in-memory events", memory), ("agent, RedisStore events", redis)):
        s50, s99 = p50_p99(samples)
        print(f"   {label:<27} p50 {s50:7.3f} ms  p99 {s99:7.3f} ms   (+{s50 - b50:.3f} ms, {s50 / b50:.1f}× bare p50)")
    print(f"   {'baseline: bare loop':<27} p50 {b50:7.3f} ms  p99 {b99:7.3f} ms")
    verdict = "meets" if p50_p99(redis)[0] <= 10 else "MISSES"
    print(f"   target ≤ 10 ms p50 with Redis events: {verdict}")


async def events_per_second(args: argparse.Namespace, store: RedisStore, client: aioredis.Redis) -> None:
    print(f"2. events appended per second ({args.events} events of a tool.result with 2 KB output)")
    data: JSON = {"id": "toolu_0001", "name": "bash", "output": OUTPUT, "is_error": False, "exit_code": 0}
    event = Event("tool.result", data)

    async def ours(run: str, n: int) -> None:
        for _ in range(n):
            await store.append_event(run, event)

    async def bare(run: str, n: int) -> None:
        import json

        for _ in range(n):
            fields = {"type": event.type, "ts": repr(time.time()), "data": json.dumps(event.data)}
            await client.xadd(f"bench:bare:{run}", fields)  # type: ignore[arg-type]

    for parallel in (1, 8):
        rates = {}
        for label, append in (("RedisStore.append_event", ours), ("bare XADD", bare)):
            each = args.events // parallel
            await asyncio.gather(*(append(f"warm-{label}-{i}", 50) for i in range(parallel)))
            start = time.perf_counter()
            await asyncio.gather(*(append(f"{label}-{parallel}-{i}", each) for i in range(parallel)))
            rates[label] = each * parallel / (time.perf_counter() - start)
        ratio = rates["RedisStore.append_event"] / rates["bare XADD"]
        print(
            f"   {parallel} run(s) at once: {rates['RedisStore.append_event']:8.0f} events/s"
            f"   baseline bare XADD {rates['bare XADD']:8.0f}/s   ({ratio:.2f}×)"
        )


async def cache_share() -> None:
    print("3. prompt caching: a 20-turn run against the Anthropic test server")
    state = AnthropicState()
    turns = [Turn([text(f"Step {n}."), bash(f"cat file{n}.py")]) for n in range(19)]
    state.add_script(Script([*turns, Turn([text("Done.")])]))
    sink = MemorySink()
    with tempfile.TemporaryDirectory() as tmp, serve_in_thread(create_app(state)) as served:
        routine = Routine(name="bench", repo="acme/calc", prompt="Fix the failing test.")
        system = build_system(routine, workspace=Path(tmp))
        toolbox = Toolbox(["bash", "edit"], hands=InstantHands(Path(tmp)))
        async with AnthropicModel("sk-ant-bench", base_url=served.url) as model:
            agent = Agent(model, toolbox, sink, Budget("claude-sonnet-4-6", 30, 10, price=cost_usd))
            outcome = await agent.run(system, "Run the routine now.")
    usages = [data["usage"] for type, data in sink.events if type == "model.turn"]
    uncached = sum(cost_usd("claude-sonnet-4-6", {"input_tokens": prompt_tokens(u), **_out(u)}) for u in usages)
    print(f"   turns {outcome.turns}; input tokens {sum(prompt_tokens(u) for u in usages)}")
    print(f"   read from cache after turn 1: {cache_read_share(usages[1:]):.1%}  (target ≥ 85%)")
    print(f"   cost ${outcome.cost_usd:.4f} vs ${uncached:.4f} without a cache ({outcome.cost_usd / uncached:.2f}×)")


def _out(usage: dict[str, int]) -> dict[str, int]:
    return {"output_tokens": usage["output_tokens"]}


async def main(args: argparse.Namespace) -> None:
    client = aioredis.Redis.from_url(args.redis)
    await client.flushdb()
    try:
        store = RedisStore(client, prefix="bench:")
        await loop_overhead(args, store)
        await events_per_second(args, store, client)
        await cache_share()
    finally:
        await client.flushdb()
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    asyncio.run(main(parser.parse_args()))
