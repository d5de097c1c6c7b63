"""``openai:<model>``: the Chat Completions API, to OpenAI or any compatible server.

Works with OpenAI, Ollama, vLLM, llama.cpp's server, LM Studio, OpenRouter and the like. The
``openai`` endpoint reads ``OPENAI_BASE_URL`` (default ``https://api.openai.com/v1``) and
``OPENAI_API_KEY``; named endpoints (``local:llama3``) come from
``[tool.executus.providers.endpoints.<name>]`` with ``api = "openai"``.

What is sent is what every one of those servers accepts: an assistant message that only calls tools
carries ``"content": ""`` (llama.cpp's server answers 500 to ``null``; ``tool_only_content = "null"``
sends ``null`` for a server that wants it), a request that declares tools carries
``"tool_choice": "auto"`` (OpenAI's default, which some servers need said before they show the
model its tools) unless the agent's ``ModelSettings`` set ``tool_choice``, tool results carry
``tool_call_id``, and ``ModelSettings`` extras pass through as body fields (``top_p``,
``tool_choice``, ``reasoning_effort``, ...). What is read is what each of them
sends: content as a string or as text parts, tool-call arguments as a JSON string or an object,
missing tool-call ids, finish reasons under their several names.

The wire path is lean: each message is serialized once, into its ``_wire`` cache, and a request
body is the concatenation of those cached bytes.
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
    HttpModel,
    as_count,
    as_dict,
    as_list,
    as_str,
    compact,
    get_endpoint,
    json_object,
)
from executus_core.types import (
    Message,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    ToolCall,
    ToolSpec,
    Usage,
)

__all__ = ["OPENAI", "OpenAIModel", "create_openai", "sends_tool_choice"]

OPENAI = ApiDefaults(
    api="openai",
    base_url="https://api.openai.com/v1",
    base_url_env="OPENAI_BASE_URL",
    api_key_env="OPENAI_API_KEY",
    path="/chat/completions",
    auth_header=lambda key: ("authorization", f"Bearer {key}"),
)

# Finish reasons as servers spell them -> the names executus reports (OpenAI's).
_FINISH = {
    "stop": "stop",
    "eos": "stop",
    "eos_token": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "model_length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
}

# Body fields executus writes itself; a ModelSettings extra of the same name would clash.
_RESERVED = frozenset({"model", "messages", "tools", "stream", "stream_options"})


def sends_tool_choice(request: ModelRequest) -> bool:
    """Whether the body for ``request`` carries a ``tool_choice`` (executus's ``"auto"`` or the agent's)."""
    extra = request.settings.__pydantic_extra__
    return bool(request.tools) or bool(extra and "tool_choice" in extra)


def _settings_bytes(settings: ModelSettings, tools: bool) -> bytes:
    """The body fields from ``ModelSettings``, as ``,"key":value...`` (or nothing).

    With ``tools`` declared, ``tool_choice`` is ``"auto"`` unless the settings choose.
    """
    fields: dict[str, Any] = {}
    if settings.max_tokens is not None:
        fields["max_tokens"] = settings.max_tokens
    if settings.temperature is not None:
        fields["temperature"] = settings.temperature
    extra = settings.__pydantic_extra__
    if extra:
        clash = _RESERVED.intersection(extra)
        if clash:
            raise ConfigError(
                f"ModelSettings sets {', '.join(sorted(clash))}, which executus writes itself; "
                "remove it (use ModelSettings.stream to stream)"
            )
        fields.update(extra)
    if tools and "tool_choice" not in fields:
        fields["tool_choice"] = "auto"
    if not fields:
        return b""
    return b"," + orjson.dumps(fields)[1:-1]


def _text(content: Any) -> str | None:
    """Message content as text: a string, or the text of a list of content parts."""
    if content is None or isinstance(content, str):
        return content or None
    if isinstance(content, list):
        text = "".join(
            part.get("text") or ""
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
        return text or None
    return None


def _arguments(raw: Any) -> tuple[dict[str, Any], str | None]:
    """Parse tool-call arguments; ``({}, why)`` when they are not a JSON object."""
    if raw is None:
        return {}, None  # some servers leave the arguments out of a call without any
    if isinstance(raw, dict):
        return raw, None
    if not isinstance(raw, str):
        return {}, f"expected a JSON object, got {type(raw).__name__}"
    return json_object(raw)


def _usage(data: Any) -> Usage:
    """Usage as OpenAI counts it; anything that is not a count reads as 0."""
    data = as_dict(data)
    cached = as_count(as_dict(data.get("prompt_tokens_details")).get("cached_tokens")) or as_count(
        data.get("prompt_cache_hit_tokens")  # DeepSeek's name for it
    )
    return Usage.model_construct(
        input_tokens=as_count(data.get("prompt_tokens")),
        output_tokens=as_count(data.get("completion_tokens")),
        thinking_tokens=as_count(as_dict(data.get("completion_tokens_details")).get("reasoning_tokens")),
        cached_input_tokens=cached,
    )


def _response_format(schema: dict[str, Any]) -> bytes:
    """``response_format`` asking for JSON that follows ``schema`` (a typed agent's answer)."""
    form = {"type": "json_schema", "json_schema": {"name": "final_result", "schema": schema, "strict": False}}
    return b',"response_format":' + orjson.dumps(form)


class OpenAIModel(HttpModel):
    """A model behind a Chat Completions endpoint. Built by `create_openai` from ``openai:<model>``.

    ``supports_output_schema``: a typed agent's schema goes out as ``response_format``.

    Args:
        model: the model name the server knows (``gpt-4o-mini``, ``llama3.1:8b``, ...).
        endpoint: the shared `Endpoint` (address, key, pooled client, retry policy).
    """

    supports_output_schema = True

    def __init__(self, model: str, endpoint: Endpoint) -> None:
        super().__init__(model, endpoint)
        self._head = b'{"model":' + orjson.dumps(model) + b',"messages":['
        null = endpoint.settings.tool_only_content == "null"
        self._tool_only_content: str | None = None if null else ""
        # The wire form depends on that choice, so it is part of the cache key.
        self._wire_key = "openai/null" if null else "openai"
        self._stream_tail = (
            b',"stream":true,"stream_options":{"include_usage":true}'
            if endpoint.settings.stream_usage
            else b',"stream":true'
        )

    # -- the request ---------------------------------------------------------------------------

    def _encode(self, message: Message) -> bytes:
        role = message.role
        data: dict[str, Any]
        if role == "tool":
            data = {
                "role": "tool",
                "tool_call_id": message.tool_call_id or "",
                "content": message.content or "",
            }
        elif role == "assistant":
            data = {"role": "assistant", "content": message.content}
            if message.tool_calls:
                if not message.content:
                    data["content"] = self._tool_only_content
                provider = (message.provider_data or {}).get("openai") or {}
                raw = provider.get("arguments") or {}
                data["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.name,
                            # Arguments that were not JSON go back as the model wrote them.
                            "arguments": raw.get(call.id) or orjson.dumps(call.arguments).decode(),
                        },
                    }
                    for call in message.tool_calls
                ]
            elif message.content is None:
                data["content"] = ""
        else:
            data = {"role": role, "content": message.content or ""}
            if message.name:
                data["name"] = message.name
        return compact(orjson.dumps(data))

    def _tool_wire(self, spec: ToolSpec) -> dict[str, Any]:
        function: dict[str, Any] = {"name": spec.name}
        if spec.description:
            function["description"] = spec.description
        function["parameters"] = spec.parameters
        return {"type": "function", "function": function}

    def body(self, request: ModelRequest, *, stream: bool = False) -> bytes:
        """The request body for ``request``, assembled from each message's cached wire bytes."""
        key = self._wire_key
        parts = []
        for message in request.messages:
            # Read the cache through __pydantic_private__: pydantic's __getattr__ for a private
            # attribute costs about a microsecond, paid per message on every step.
            private = message.__pydantic_private__
            cache = private["_wire"] if private is not None else message._wire
            wire = cache.get(key)
            if wire is None:
                wire = cache[key] = self._encode(message)
            parts.append(wire)
        chunks = [self._head, b",".join(parts), b"]"]
        if request.tools:
            chunks += (b',"tools":[', self._tool_bytes(request.tools), b"]")
        settings = _settings_bytes(request.settings, bool(request.tools))
        if settings:
            chunks.append(settings)
        if request.output_schema is not None and "response_format" not in (
            request.settings.__pydantic_extra__ or ()
        ):
            chunks.append(_response_format(request.output_schema))
        if stream:
            chunks.append(self._stream_tail)
        chunks.append(b"}")
        return b"".join(chunks)

    def _parse(self, response: httpx2.Response, body: bytes) -> ModelResponse:
        data = self._load(response)
        choices = data.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            error = data.get("error")
            said = error.get("message") if isinstance(error, dict) else error
            raise self._bad(
                "the answer has no choices",
                response,
                provider_message=said if isinstance(said, str) else None,
            )
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise self._bad("the answer's first choice has no message", response)
        calls = []
        raw_calls = message.get("tool_calls")
        if raw_calls is not None and not isinstance(raw_calls, list):
            raise self._bad(f"the answer's tool_calls is not a list: {type(raw_calls).__name__}", response)
        for raw in raw_calls or ():
            function = raw.get("function") if isinstance(raw, dict) else None
            if not isinstance(function, dict):
                raise self._bad(f"a tool call has no function: {raw!r}", response)
            calls.append((raw.get("id"), function.get("name"), function.get("arguments")))
        return self._response(
            _text(message.get("content")) or as_str(message.get("refusal")) or None,
            calls,
            choice.get("finish_reason"),
            data.get("usage"),
            data.get("model"),
            response,
            body,
        )

    def _response(
        self,
        text: str | None,
        calls: list[tuple[Any, Any, Any]],
        finish: Any,
        usage: Any,
        model: Any,
        response: httpx2.Response,
        body: bytes,
    ) -> ModelResponse:
        """The `ModelResponse` both paths (plain and streamed) end in, so they cannot differ."""
        tool_calls = []
        invalid: dict[str, str] = {}
        for call_id, name, raw in calls:
            if not name or not isinstance(name, str):
                raise self._bad("a tool call has no function name", response)
            if not call_id or not isinstance(call_id, str):
                call_id = f"call_{uuid.uuid4().hex[:24]}"  # some servers send none; results need one
            arguments, error = _arguments(raw)
            sent = None
            if error is not None:
                sent = invalid[call_id] = raw if isinstance(raw, str) else orjson.dumps(raw).decode()
            tool_calls.append(
                ToolCall.model_construct(
                    id=call_id, name=name, arguments=arguments, arguments_error=error, raw_arguments=sent
                )
            )
        if finish is None:
            reason = "tool_calls" if tool_calls else "stop"  # some servers leave it out
        else:
            found = _FINISH.get(finish.lower()) if isinstance(finish, str) else None
            if found is None:
                raise self._bad(
                    f"the model stopped for an unknown reason: finish_reason {finish!r}; "
                    f"known: {', '.join(sorted(_FINISH))}",
                    response,
                )
            reason = found
        answer = ModelResponse.model_construct(
            text=text,
            tool_calls=tool_calls,
            usage=_usage(usage),
            finish_reason=reason,
            model=model if isinstance(model, str) else None,
            provider_data={"openai": {"arguments": invalid}} if invalid else None,
            warnings=[],  # given: a default_factory costs model_construct an inspect.signature
        )
        return self._finish(answer, usage_reported=isinstance(usage, dict), body=body)

    async def _complete_stream(self, body: bytes, request: ModelRequest) -> ModelResponse:
        response = await self.endpoint.post(body, request, stream=True)
        emit = request.emit
        text: list[str] = []
        refusal: list[str] = []
        calls: dict[int, list[Any]] = {}  # index -> [id, name, argument pieces]
        finish: Any = None
        usage: Any = None
        model: Any = None
        done = seen_choice = False
        events = 0
        try:
            async for _event, data in self._events(response):
                if data == b"[DONE]":
                    done = True
                    break
                events += 1
                chunk = self._stream_event(data, events, response)
                choices = as_list(chunk.get("choices"))
                if not choices and chunk.get("error") is not None:
                    raise self._stream_error(chunk["error"], response)
                model = as_str(chunk.get("model")) or model
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                for choice in choices:
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    seen_choice = True
                    delta = as_dict(choice.get("delta"))
                    piece = _text(delta.get("content"))
                    if piece:
                        text.append(piece)
                        if emit is not None:
                            emit("model.delta", {"text": piece})
                    if as_str(delta.get("refusal")):
                        refusal.append(delta["refusal"])
                    for raw in as_list(delta.get("tool_calls")):
                        self._tool_delta(raw, calls, emit)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        except httpx2.TransportError as exc:
            raise self._cut_off(exc, events, response) from None
        finally:
            await response.aclose()
        if events == 0 and not done:
            raise self._bad(self._empty_stream(request), response)
        if not done and finish is None:
            raise self._bad(
                f"the stream was cut off: it ended after {events} events without a finish reason or [DONE]",
                response,
            )
        if not seen_choice:
            raise self._bad("the stream held no choices", response)
        ordered = [
            (slot[0], slot[1], "".join(slot[2]) if slot[2] else None) for _, slot in sorted(calls.items())
        ]
        return self._response(
            "".join(text) or "".join(refusal) or None, ordered, finish, usage, model, response, body
        )

    @staticmethod
    def _empty_stream(request: ModelRequest) -> str:
        """The error for a 200 whose stream held no event at all, with what most likely caused it."""
        message = "the server answered 200 with an empty stream (no events, no [DONE])"
        if sends_tool_choice(request):
            message += (
                "; some servers (llama-cpp-python's) do this when tool_choice is sent with stream = true: "
                "turn streaming off for agents with tools on this endpoint"
            )
        return message

    @staticmethod
    def _tool_delta(raw: Any, calls: dict[int, list[Any]], emit: Any) -> None:
        if not isinstance(raw, dict):
            return
        index = raw.get("index")
        call_id = as_str(raw.get("id"))
        if not isinstance(index, int):
            # No index (some servers send each call whole): match by id, else a new call.
            index = next((i for i, slot in calls.items() if call_id and slot[0] == call_id), len(calls))
        slot = calls.get(index)
        if slot is None:
            slot = calls[index] = [None, None, []]
        if call_id and not slot[0]:
            slot[0] = call_id
        function = as_dict(raw.get("function"))
        name = as_str(function.get("name"))
        if name and not slot[1]:
            slot[1] = name  # some servers repeat the name in every delta: keep the first
        piece = function.get("arguments")
        if piece is not None and not isinstance(piece, str):
            piece = orjson.dumps(piece).decode()
        if piece:
            slot[2].append(piece)
        if emit is not None:
            emit(
                "model.delta",
                {"tool_call": {"index": index, "id": slot[0], "name": slot[1], "arguments": piece or ""}},
            )


def create_openai(name: str, settings: Settings, *, endpoint: str = "openai") -> OpenAIModel:
    """Factory for ``openai:<model>``, and for ``<endpoint>:<model>`` on a named endpoint with ``api = "openai"``."""
    if not name:
        raise ConfigError(
            f"model id {endpoint}: names no model; write {endpoint}:<model>, e.g. openai:gpt-4o-mini"
        )
    return OpenAIModel(name, get_endpoint(settings, endpoint, OPENAI))
