"""``anthropic:<model>``: the Messages API.

The ``anthropic`` endpoint reads ``ANTHROPIC_BASE_URL`` (default ``https://api.anthropic.com``) and
``ANTHROPIC_API_KEY``; named endpoints with ``api = "anthropic"`` serve Anthropic-compatible
servers.

How a transcript maps onto the API:

- leading system messages become the top-level ``system`` prompt; a system message later in the
  transcript (a steer) is sent as user text, since the API has no system role in ``messages``;
- tool calls are ``tool_use`` blocks; tool results are ``tool_result`` blocks (``is_error`` set for
  errors) in one user turn, in the order the calls were made;
- thinking blocks (``thinking`` / ``redacted_thinking``, with their signatures) are kept in the
  assistant message's ``provider_data["anthropic"]["content"]`` and sent back unchanged, as the API
  requires for tool use with extended thinking;
- ``max_tokens`` is required: ``ModelSettings.max_tokens``, else the endpoint's ``max_tokens``
  setting (4096), raised above a thinking ``budget_tokens`` when one is set.

Each message's blocks are serialized once into its ``_wire`` cache, and request bodies are
assembled from those bytes.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx2
import orjson

from executus_core.config import Settings
from executus_core.errors import ConfigError
from executus_core.providers._http import (
    ApiDefaults,
    Endpoint,
    EndpointSettings,
    HttpModel,
    as_count,
    as_dict,
    as_str,
    compact,
    get_endpoint,
    json_object,
)
from executus_core.types import Message, ModelRequest, ModelResponse, ModelSettings, ToolCall, ToolSpec, Usage

__all__ = ["ANTHROPIC", "AnthropicModel", "create_anthropic"]


def _version_header(settings: EndpointSettings) -> list[tuple[str, str]]:
    return [("anthropic-version", settings.anthropic_version)]


ANTHROPIC = ApiDefaults(
    api="anthropic",
    base_url="https://api.anthropic.com",
    base_url_env="ANTHROPIC_BASE_URL",
    api_key_env="ANTHROPIC_API_KEY",
    path="/v1/messages",
    auth_header=lambda key: ("x-api-key", key),
    extra_headers=_version_header,
)

# stop_reason -> the finish reasons executus reports (OpenAI's names, shared by every provider).
_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
    "pause_turn": "pause",
}

_RESERVED = frozenset({"model", "messages", "tools", "stream", "system", "max_tokens"})
_TURN = {"user": b'{"role":"user","content":[', "assistant": b'{"role":"assistant","content":['}
_WIRE_KEY = "anthropic"


def _usage(data: Any) -> Usage:
    """Anthropic counts cached input apart from ``input_tokens``; executus counts it inside."""
    data = as_dict(data)
    read = as_count(data.get("cache_read_input_tokens"))
    written = as_count(data.get("cache_creation_input_tokens"))
    return Usage.model_construct(
        input_tokens=as_count(data.get("input_tokens")) + read + written,
        output_tokens=as_count(data.get("output_tokens")),
        thinking_tokens=0,  # the API folds thinking into output_tokens and does not count it apart
        cached_input_tokens=read,
    )


def _index(value: Any, default: int) -> int:
    """A stream event's block index: an integer, else ``default``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class AnthropicModel(HttpModel):
    """A model behind a Messages API endpoint. Built by `create_anthropic` from ``anthropic:<model>``.

    Args:
        model: the model name (``claude-sonnet-4-5``, ...).
        endpoint: the shared `Endpoint` (address, key, pooled client, retry policy).
    """

    request_id_header = "request-id"

    def __init__(self, model: str, endpoint: Endpoint) -> None:
        super().__init__(model, endpoint)
        self.max_tokens = endpoint.settings.max_tokens
        self._head = b'{"model":' + orjson.dumps(model)

    # -- the request ---------------------------------------------------------------------------

    @staticmethod
    def _encode(message: Message) -> tuple[str, bytes]:
        """A message as ``(role of its turn, its content blocks joined by commas)``."""
        role = message.role
        if role == "assistant":
            kept = ((message.provider_data or {}).get("anthropic") or {}).get("content")
            if kept:
                return "assistant", compact(b",".join(orjson.dumps(block) for block in kept))
            blocks: list[dict[str, Any]] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            blocks.extend(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
                for call in message.tool_calls
            )
            return "assistant", compact(b",".join(orjson.dumps(block) for block in blocks))
        if role == "tool":
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id or ""}
            if message.content:
                block["content"] = message.content
            if message.is_error:
                block["is_error"] = True
            return "user", compact(orjson.dumps(block))
        # user text, and system messages past the leading ones (the API has no system turn)
        return "user", compact(orjson.dumps({"type": "text", "text": message.content or ""}))

    def _tool_wire(self, spec: ToolSpec) -> dict[str, Any]:
        data: dict[str, Any] = {"name": spec.name}
        if spec.description:
            data["description"] = spec.description
        data["input_schema"] = spec.parameters
        return data

    def _settings(self, settings: ModelSettings) -> tuple[int, bytes]:
        fields: dict[str, Any] = {}
        if settings.temperature is not None:
            fields["temperature"] = settings.temperature
        extra = settings.__pydantic_extra__
        if extra:
            clash = _RESERVED.intersection(extra)
            if clash:
                raise ConfigError(
                    f"ModelSettings sets {', '.join(sorted(clash))}, which executus writes itself; "
                    "remove it (ModelSettings.max_tokens sets max_tokens, ModelSettings.stream streams)"
                )
            fields.update(extra)
        max_tokens = settings.max_tokens
        if max_tokens is None:
            max_tokens = self.max_tokens
            thinking = fields.get("thinking")
            budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
            if isinstance(budget, int) and budget >= max_tokens:
                max_tokens = budget + self.max_tokens  # the API wants max_tokens above the budget
        return max_tokens, (b"," + orjson.dumps(fields)[1:-1]) if fields else b""

    def body(self, request: ModelRequest, *, stream: bool = False) -> bytes:
        """The request body for ``request``, assembled from each message's cached blocks."""
        messages = request.messages
        system: list[str] = []
        start = 0
        for message in messages:
            if message.role != "system":
                break
            if message.content:
                system.append(message.content)
            start += 1
        turns: list[bytes] = []
        role = ""
        blocks: list[bytes] = []
        encode = self._encode
        for index in range(start, len(messages)):
            message = messages[index]
            private = message.__pydantic_private__  # not message._wire: see OpenAIModel.body
            cache = private["_wire"] if private is not None else message._wire
            wire = cache.get(_WIRE_KEY)
            if wire is None:
                wire = cache[_WIRE_KEY] = encode(message)
            turn, content = wire
            if not content:
                continue  # an empty assistant answer: the API rejects empty turns
            if turn != role:
                if blocks:
                    turns.append(_TURN[role] + b",".join(blocks) + b"]}")
                role, blocks = turn, [content]
            else:
                blocks.append(content)  # consecutive tool results (and a steer) share one user turn
        if blocks:
            turns.append(_TURN[role] + b",".join(blocks) + b"]}")
        max_tokens, settings = self._settings(request.settings)
        chunks = [self._head, b',"max_tokens":', str(max_tokens).encode()]
        if system:
            chunks += (b',"system":', orjson.dumps("\n\n".join(system)))
        chunks += (b',"messages":[', b",".join(turns), b"]")
        if request.tools:
            chunks += (b',"tools":[', self._tool_bytes(request.tools), b"]")
        if settings:
            chunks.append(settings)
        if stream:
            chunks.append(b',"stream":true')
        chunks.append(b"}")
        return b"".join(chunks)

    def _parse(self, response: httpx2.Response, body: bytes) -> ModelResponse:
        data = self._load(response)
        if data.get("type") == "error":
            error = data.get("error")
            said = error.get("message") if isinstance(error, dict) else None
            raise self._bad("the server answered with an error", response, provider_message=said)
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise self._bad("the answer has no content list", response)
        return self._response(
            blocks, {}, data.get("stop_reason"), data.get("usage"), data.get("model"), response, body
        )

    def _response(
        self,
        blocks: list[Any],
        errors: dict[int, tuple[str, str]],
        stop_reason: Any,
        usage: Any,
        model: Any,
        response: httpx2.Response,
        body: bytes,
    ) -> ModelResponse:
        """The `ModelResponse` both paths (plain and streamed) end in, so they cannot differ.

        ``errors`` maps a block's position to why its streamed tool input was not valid JSON, and
        the input as it was streamed.
        """
        text: list[str] = []
        tool_calls: list[ToolCall] = []
        kept: list[dict[str, Any]] = []
        keep = False
        for position, block in enumerate(blocks):
            if not isinstance(block, dict):
                raise self._bad(f"content block {position} is not an object", response)
            kind = block.get("type")
            if kind == "text":
                text.append(as_str(block.get("text")))
                kept.append({"type": "text", "text": as_str(block.get("text"))})
            elif kind == "tool_use":
                name = block.get("name")
                if not name or not isinstance(name, str):
                    raise self._bad(f"tool_use block {position} has no name", response)
                call_id = block.get("id")
                if not call_id or not isinstance(call_id, str):
                    call_id = f"toolu_{uuid.uuid4().hex[:24]}"
                raw = block.get("input")
                error, sent = errors.get(position) or (None, None)
                if error is None and not isinstance(raw, dict):
                    error = f"expected a JSON object, got {type(raw).__name__}"
                    sent = orjson.dumps(raw, default=repr).decode()
                arguments = raw if error is None and isinstance(raw, dict) else {}
                tool_calls.append(
                    ToolCall.model_construct(
                        id=call_id, name=name, arguments=arguments, arguments_error=error, raw_arguments=sent
                    )
                )
                kept.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
            elif kind == "thinking":
                keep = True
                kept.append(
                    {
                        "type": "thinking",
                        "thinking": as_str(block.get("thinking")),
                        "signature": as_str(block.get("signature")),
                    }
                )
            elif kind == "redacted_thinking":
                keep = True
                kept.append({"type": "redacted_thinking", "data": as_str(block.get("data"))})
            else:
                keep = True  # server tool blocks and the like: the API wants them back as they came
                kept.append(block)
        if stop_reason is None:
            reason = "tool_calls" if tool_calls else "stop"
        else:
            found = _STOP.get(stop_reason) if isinstance(stop_reason, str) else None
            if found is None:
                raise self._bad(
                    f"the model stopped for an unknown reason: stop_reason {stop_reason!r}; "
                    f"known: {', '.join(sorted(_STOP))}",
                    response,
                )
            reason = found
        answer = ModelResponse.model_construct(
            text="".join(text) or None,
            tool_calls=tool_calls,
            usage=_usage(usage),
            finish_reason=reason,
            model=model if isinstance(model, str) else None,
            provider_data={"anthropic": {"content": kept}} if keep else None,
            warnings=[],  # given: a default_factory costs model_construct an inspect.signature
        )
        return self._finish(answer, usage_reported=isinstance(usage, dict) and bool(usage), body=body)

    async def _complete_stream(self, body: bytes, request: ModelRequest) -> ModelResponse:
        response = await self.endpoint.post(body, request, stream=True)
        emit = request.emit
        blocks: dict[int, dict[str, Any]] = {}
        # (block index, field) -> the streamed pieces, joined once at the end: adding each piece to
        # the block's string would copy the whole text again per delta.
        pieces: dict[tuple[int, str], list[str]] = {}
        usage: dict[str, Any] = {}
        model: Any = None
        stop_reason: Any = None
        done = False
        events = 0
        try:
            async for name, data in self._events(response):
                events += 1
                event = self._stream_event(data, events, response)
                kind = event.get("type") or name.decode("utf-8", "replace")
                if kind == "content_block_delta":
                    index = _index(event.get("index"), 0)
                    delta = as_dict(event.get("delta"))
                    block = blocks.get(index)
                    if block is None:
                        raise self._bad(
                            f"stream event {events}: a delta for block {index}, never started", response
                        )
                    dtype = delta.get("type")
                    if dtype == "text_delta":
                        piece = as_str(delta.get("text"))
                        pieces.setdefault((index, "text"), []).append(piece)
                        if emit is not None and piece:
                            emit("model.delta", {"text": piece})
                    elif dtype == "input_json_delta":
                        piece = as_str(delta.get("partial_json"))
                        pieces.setdefault((index, "input"), []).append(piece)
                        if emit is not None:
                            emit(
                                "model.delta",
                                {
                                    "tool_call": {
                                        "index": index,
                                        "id": block.get("id"),
                                        "name": block.get("name"),
                                        "arguments": piece,
                                    }
                                },
                            )
                    elif dtype == "thinking_delta":
                        piece = as_str(delta.get("thinking"))
                        pieces.setdefault((index, "thinking"), []).append(piece)
                        if emit is not None and piece:
                            emit("model.delta", {"thinking": piece})
                    elif dtype == "signature_delta":
                        pieces.setdefault((index, "signature"), []).append(as_str(delta.get("signature")))
                elif kind == "content_block_start":
                    block = dict(as_dict(event.get("content_block")))
                    blocks[_index(event.get("index"), len(blocks))] = block
                    if emit is not None and block.get("type") == "tool_use":
                        emit(
                            "model.delta",
                            {
                                "tool_call": {
                                    "index": event.get("index"),
                                    "id": block.get("id"),
                                    "name": block.get("name"),
                                    "arguments": "",
                                }
                            },
                        )
                elif kind == "message_start":
                    message = as_dict(event.get("message"))
                    model = message.get("model")
                    if isinstance(message.get("usage"), dict):
                        usage.update(message["usage"])
                elif kind == "message_delta":
                    stop_reason = as_dict(event.get("delta")).get("stop_reason") or stop_reason
                    if isinstance(event.get("usage"), dict):
                        # message_delta counts are cumulative: they replace message_start's
                        usage.update({k: v for k, v in event["usage"].items() if v is not None})
                elif kind == "message_stop":
                    done = True
                    break
                elif kind == "error":
                    raise self._stream_error(event.get("error"), response)
                # ping, content_block_stop and event types added later need nothing
        except httpx2.TransportError as exc:
            raise self._cut_off(exc, events, response) from None
        finally:
            await response.aclose()
        if not done:
            raise self._bad(
                f"the stream was cut off: it ended after {events} events without message_stop", response
            )
        content: list[Any] = []
        errors: dict[int, tuple[str, str]] = {}
        for position, (index, block) in enumerate(sorted(blocks.items())):
            for field in ("text", "thinking", "signature"):
                streamed = pieces.get((index, field))
                if streamed is not None:
                    block[field] = as_str(block.get(field)) + "".join(streamed)
            if block.get("type") == "tool_use":
                streamed_input = "".join(pieces.get((index, "input"), ()))
                block["input"], error = json_object(streamed_input)
                if error is not None:
                    errors[position] = (error, streamed_input)
            content.append(block)
        return self._response(content, errors, stop_reason, usage, model, response, body)


def create_anthropic(name: str, settings: Settings, *, endpoint: str = "anthropic") -> AnthropicModel:
    """Factory for ``anthropic:<model>``, and ``<endpoint>:<model>`` on a named endpoint with ``api = "anthropic"``."""
    if not name:
        raise ConfigError(
            f"model id {endpoint}: names no model; write {endpoint}:<model>, e.g. anthropic:claude-sonnet-4-5"
        )
    return AnthropicModel(name, get_endpoint(settings, endpoint, ANTHROPIC))
