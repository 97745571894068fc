"""The real ModelClient: Anthropic's Messages API through the official SDK (AsyncAnthropic)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import httpx2
from anthropic import AsyncAnthropic, omit

from app.core.domain import JSON
from app.core.errors import ModelError, PromptTooLong
from app.core.ports import MODEL_ANSWERING, ModelResponse

DEFAULT_BASE_URL = "https://api.anthropic.com"
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _usage(usage: Any) -> dict[str, int]:
    """The token counts, and the web searches Anthropic ran (billed per search, on top of tokens)."""
    counts = {name: int(getattr(usage, name, 0) or 0) for name in USAGE_FIELDS}
    server = getattr(usage, "server_tool_use", None)
    counts["web_search_requests"] = int(getattr(server, "web_search_requests", 0) or 0)
    return counts


# The fields of each block type that the API accepts back in a later request.
ECHO_FIELDS = {
    "text": ("type", "text", "citations"),
    "tool_use": ("type", "id", "name", "input", "caller"),
    "thinking": ("type", "thinking", "signature"),
    "redacted_thinking": ("type", "data"),
}


class AnthropicModel:
    """Sends Messages requests with streaming and converts the final message to a ModelResponse.

    Retries on 429, 5xx, 529 and connection errors are the SDK's (`max_retries`, honouring
    retry-after); once exhausted, or on any other failure, `create` raises ModelError with a
    message that says what happened and what to do, never containing the API key.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        max_retries: int = 4,
        timeout_s: float = 600.0,
        *,
        stream: bool = True,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        self._api_key = api_key
        self._base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._timeout_s = timeout_s
        self._stream = stream
        self._client = AsyncAnthropic(
            api_key=api_key,
            base_url=self._base_url,
            max_retries=max_retries,
            timeout=timeout_s,
            http_client=http_client,
        )

    @classmethod
    def warm(cls) -> list[ModelResponse]:
        """Send one streamed and one plain request to a canned answer (a MockTransport of httpx2, the SDK's
        HTTP client, answering in the Messages API's own shapes), so that what the SDK imports and builds
        on its first request and first answer (modules, validators) is built now, in the calling thread,
        rather than on the event loop of a worker's first run. The real client's connections and TLS
        are its own and not touched. Returns the two answers."""

        async def ask_both() -> list[ModelResponse]:
            answers = []
            for stream in (True, False):
                client = httpx2.AsyncClient(transport=httpx2.MockTransport(_canned))
                async with cls(
                    "warm-up", "http://warm-up.invalid", max_retries=0, stream=stream, http_client=client
                ) as model:
                    answer = await model.create(
                        model="warm-up",
                        system=[{"type": "text", "text": "Warm up."}],
                        messages=[{"role": "user", "content": "Warm up."}],
                        tools=[{"name": "bash", "description": "-", "input_schema": {"type": "object"}}],
                        max_tokens=16,
                    )
                answers.append(answer)
            return answers

        return asyncio.run(ask_both())

    async def create(
        self,
        *,
        model: str,
        system: list[JSON],
        messages: list[JSON],
        tools: list[JSON],
        max_tokens: int,
    ) -> ModelResponse:
        """One assistant turn. Raises ModelError once the SDK's retries are exhausted."""
        params: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "messages": messages,
            "system": system or omit,
            "tools": tools or omit,
        }
        try:
            answering = MODEL_ANSWERING.get()
            if self._stream:
                async with self._client.messages.stream(**params) as stream:
                    if answering is not None:
                        answering()
                    message = await stream.get_final_message()
            else:
                message = await self._client.messages.create(**params)
                if answering is not None:
                    answering()
        except anthropic.AnthropicError as exc:
            too_long = isinstance(exc, anthropic.BadRequestError) and "prompt is too long" in str(exc)
            error = PromptTooLong if too_long else ModelError
            raise error(self._redact(self._describe(exc, model))) from exc
        return ModelResponse(
            content=[_echo(block.model_dump(mode="json", exclude_none=True)) for block in message.content],
            stop_reason=message.stop_reason,
            usage=_usage(message.usage),
            model=message.model,
            id=message.id,
        )

    def _describe(self, exc: anthropic.AnthropicError, model: str) -> str:
        if isinstance(exc, anthropic.APITimeoutError):
            return (
                f"the Anthropic API did not answer within {self._timeout_s:g} s{_attempts(exc)}; "
                "the run can be retried later"
            )
        if isinstance(exc, anthropic.APIConnectionError):
            return (
                f"could not reach the Anthropic API at {self._base_url}{_attempts(exc)} ({exc.__cause__ or exc}); "
                "check ANTHROPIC_BASE_URL and the network"
            )
        if isinstance(exc, anthropic.APIStatusError):
            return _describe_status(exc, model)
        return f"the Anthropic API answered something unusable ({exc}); the run can be retried"

    def _redact(self, message: str) -> str:
        # short keys are test keys; replacing them would garble the message
        return message.replace(self._api_key, "<redacted>") if len(self._api_key) >= 8 else message

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.close()

    async def __aenter__(self) -> AnthropicModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


_WARM_MESSAGE: JSON = {
    "id": "msg_warm_up",
    "type": "message",
    "role": "assistant",
    "model": "warm-up",
    "content": [
        {"type": "text", "text": "ok"},
        {"type": "tool_use", "id": "toolu_warm_up", "name": "bash", "input": {"command": "true"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}


def _canned(request: httpx2.Request) -> httpx2.Response:
    """The answer `AnthropicModel.warm` gets: `_WARM_MESSAGE`, whole or as the API's stream of events."""
    if not json.loads(request.content).get("stream"):
        return httpx2.Response(200, json=_WARM_MESSAGE)
    start = {**_WARM_MESSAGE, "content": [], "stop_reason": None}
    events: list[JSON] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_warm_up", "name": "bash", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"command": "true"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 1},
        },
        {"type": "message_stop"},
    ]
    body = "".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in events)
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())


def _describe_status(exc: anthropic.APIStatusError, model: str) -> str:
    status = exc.status_code
    kind = exc.type or ""
    detail = exc.api_message or str(exc)
    tries = _attempts(exc)
    if status == 529 or kind == "overloaded_error":
        return f"the Anthropic API is overloaded (529){tries}; the run can be retried later"
    if status == 429 or kind == "rate_limit_error":
        return (
            f"the Anthropic API rate limit was hit (429){tries}: {detail}; "
            "lower ROUTINES_MAX_JOBS or raise the organisation's rate limit, then retry the run"
        )
    if status == 401:
        return f"ANTHROPIC_API_KEY was refused (401: {detail}); set a valid key"
    if status == 403:
        return f"the API key may not do this (403: {detail}); check the key's workspace and model access"
    if status == 404:
        return f"the Anthropic API does not know this (404: {detail}); check that model {model!r} exists"
    if status == 413:
        return f"the request is too large (413: {detail}); the conversation must be shortened"
    if status >= 500 or kind == "api_error":
        return f"the Anthropic API failed ({status}: {detail}){tries}; the run can be retried later"
    return f"the Anthropic API refused the request ({status}: {detail}); the request the agent built is invalid"


def _attempts(exc: anthropic.APIError) -> str:
    """' after N attempts', read from the retry count the SDK sent on the last attempt."""
    try:
        attempts = int(exc.request.headers.get("x-stainless-retry-count", "0")) + 1
    except (ValueError, RuntimeError):
        return ""
    return f" after {attempts} attempt{'s' if attempts > 1 else ''}"


def _echo(block: JSON) -> JSON:
    """The block with only the fields the API accepts back in a later request."""
    keep = ECHO_FIELDS.get(str(block.get("type")))
    if keep is None:
        return block
    return {name: block[name] for name in keep if name in block}
