"""A deterministic in-process ModelClient for dry runs and tests: it plays a script, no network."""

from __future__ import annotations

import asyncio
import copy
import itertools
from dataclasses import replace

from app.core.domain import JSON
from app.core.errors import ModelError
from app.core.ports import ModelResponse
from app.models.scripts import Script, Turn, check_messages, estimate_tokens, play, turn_index


class ScriptedModel:
    """Answers each request with the turn for its position in the conversation.

    The turn is chosen as the Anthropic test server chooses it: the number of assistant messages
    already in `messages` (so a rebuilt or resumed conversation continues where it was). After the
    last turn, `loop_last` (the kwarg for a list, `Script.loop_last` for a script) repeats the last
    turn; otherwise the request fails with ModelError. Requests are checked like the real API
    (alternating roles, every tool_use answered) and recorded, deep-copied, in `requests`.
    Tool_use blocks without an id get `toolu_<n>`, unique per model. Script faults are skipped,
    as the real client's retries would absorb them; `delay_ms` is honoured.
    """

    def __init__(self, turns: list[ModelResponse] | Script, *, loop_last: bool = False) -> None:
        self._given: list[ModelResponse] = [] if isinstance(turns, Script) else list(turns)
        self._script = turns if isinstance(turns, Script) else Script([_as_turn(r) for r in turns], loop_last=loop_last)
        self.requests: list[JSON] = []
        self._ids = itertools.count(1)

    async def create(
        self,
        *,
        model: str,
        system: list[JSON],
        messages: list[JSON],
        tools: list[JSON],
        max_tokens: int,
    ) -> ModelResponse:
        """The scripted response for this request. Raises ModelError when it is invalid or the script is over."""
        request = copy.deepcopy(
            {"model": model, "system": system, "messages": messages, "tools": tools, "max_tokens": max_tokens}
        )
        self.requests.append(request)
        problem = check_messages(messages)
        if problem:
            raise ModelError(f"the Anthropic API would refuse this request (400): {problem}")
        index = turn_index(messages)
        turn = self._script.turn_at(index)
        if turn is None:
            raise ModelError(
                f"ScriptedModel has {len(self._script.turns)} turns and the conversation already has {index} "
                "assistant turns; add turns or set loop_last"
            )
        if turn.delay_ms:
            await asyncio.sleep(turn.delay_ms / 1000)
        content = play(turn, lambda: f"toolu_{next(self._ids):04d}")
        usage = {
            "input_tokens": estimate_tokens(system) + estimate_tokens(messages) + estimate_tokens(tools),
            "output_tokens": estimate_tokens(content),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        response = ModelResponse(content, turn.final_stop_reason, usage, model, f"msg_scripted_{index:04d}")
        if self._given:
            given = self._given[min(index, len(self._given) - 1)]
            response = replace(
                response, usage=dict(given.usage) or usage, model=given.model or model, id=given.id or response.id
            )
        return response

    async def aclose(self) -> None:
        """Nothing to release; here so services can close any ModelClient alike."""

    async def __aenter__(self) -> ScriptedModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _as_turn(response: ModelResponse) -> Turn:
    return Turn(copy.deepcopy(response.content), response.stop_reason)
