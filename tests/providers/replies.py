"""Answers as the public API references show them, for the loopback server to replay.

OpenAI: the Chat Completions reference (the chat completion object, the chunk object with
``stream_options.include_usage``, the error object). Anthropic: the Messages reference (the message
object, content blocks, extended thinking) and its streaming reference (the event sequence
``message_start`` ... ``message_stop``, ``input_json_delta``, ``thinking_delta``, ``signature_delta``,
``ping``). Each streamed reply carries the same content as its plain twin, so a test can check that
streaming ends in the very same `ModelResponse`.
"""

from __future__ import annotations

import json
from typing import Any

from .server import sse

# --- OpenAI Chat Completions ------------------------------------------------------------------

OPENAI_USAGE = {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 12,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def openai_completion(
    message: dict[str, Any], finish_reason: Any = "stop", usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage or OPENAI_USAGE,
        "service_tier": "default",
        "system_fingerprint": "fp_44709d6fcb",
    }


OPENAI_HELLO = openai_completion(
    {"role": "assistant", "content": "Hello! How can I assist you today?", "refusal": None, "annotations": []}
)

OPENAI_TOOL_CALL = openai_completion(
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc123",
                "type": "function",
                "function": {"name": "get_current_weather", "arguments": '{\n"location": "Boston, MA"\n}'},
            }
        ],
        "refusal": None,
    },
    "tool_calls",
)

OPENAI_PARALLEL = openai_completion(
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_PpTvZ3oXG8MbW1FMJ4w1rN4m",
                "type": "function",
                "function": {"name": "get_current_weather", "arguments": '{"location": "San Francisco, CA"}'},
            },
            {
                "id": "call_Y1HVPE56Wk8qJ6ktjpqBDc9S",
                "type": "function",
                "function": {"name": "get_current_weather", "arguments": '{"location": "Tokyo, JP"}'},
            },
        ],
        "refusal": None,
    },
    "tool_calls",
)


def _chunk(delta: dict[str, Any], finish_reason: Any = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }


def _usage_chunk(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [],
        "usage": usage,
    }


OPENAI_STREAM_HELLO = [
    sse(_chunk({"role": "assistant", "content": "", "refusal": None})),
    sse(_chunk({"content": "Hello!"})),
    sse(_chunk({"content": " How can I"})),
    sse(_chunk({"content": " assist you today?"})),
    sse(_chunk({}, "stop")),
    sse(_usage_chunk(OPENAI_USAGE)),
    sse(b"[DONE]"),
]

# The two calls of OPENAI_PARALLEL, their arguments split mid-token across chunks.
OPENAI_STREAM_PARALLEL = [
    sse(
        _chunk(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_PpTvZ3oXG8MbW1FMJ4w1rN4m",
                        "type": "function",
                        "function": {"name": "get_current_weather", "arguments": ""},
                    }
                ],
            }
        )
    ),
    sse(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"loc'}}]})),
    sse(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ation": "San Fr'}}]})),
    sse(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ancisco, CA"}'}}]})),
    sse(
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_Y1HVPE56Wk8qJ6ktjpqBDc9S",
                        "type": "function",
                        "function": {"name": "get_current_weather", "arguments": ""},
                    }
                ]
            }
        )
    ),
    sse(_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"location": '}}]})),
    sse(_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '"Tokyo, JP"}'}}]})),
    sse(_chunk({}, "tool_calls")),
    sse(_usage_chunk(OPENAI_USAGE)),
    sse(b"[DONE]"),
]

OPENAI_401 = {
    "error": {
        "message": "Incorrect API key provided: sk-test-*****************cret. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}

OPENAI_429 = {
    "error": {
        "message": "Rate limit reached for gpt-4o-mini in organization org-abc on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 20s.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}

OPENAI_500 = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}

OPENAI_400 = {
    "error": {
        "message": "Invalid 'messages[1].content': string too long.",
        "type": "invalid_request_error",
        "param": "messages[1].content",
        "code": "string_above_max_length",
    }
}

# --- Anthropic Messages -----------------------------------------------------------------------

ANTHROPIC_USAGE = {
    "input_tokens": 472,
    "output_tokens": 89,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 2048,
    "service_tier": "standard",
}


def anthropic_message(
    content: list[dict[str, Any]], stop_reason: Any = "end_turn", usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage or ANTHROPIC_USAGE,
    }


ANTHROPIC_HELLO = anthropic_message([{"type": "text", "text": "Hi! My name is Claude."}])

ANTHROPIC_TOOL_USE = anthropic_message(
    [
        {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA"},
        },
    ],
    "tool_use",
)

ANTHROPIC_PARALLEL = anthropic_message(
    [
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA"},
        },
        {
            "type": "tool_use",
            "id": "toolu_01B09q90qw90lq917835lq8",
            "name": "get_time",
            "input": {"timezone": "America/Los_Angeles"},
        },
    ],
    "tool_use",
)

THINKING_SIGNATURE = "WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve/op91XWHOEBLLqIOMfFG/UvLEczmEsUjavL"

ANTHROPIC_THINKING = anthropic_message(
    [
        {
            "type": "thinking",
            "thinking": "The user wants the weather. I should call get_weather for Paris.",
            "signature": THINKING_SIGNATURE,
        },
        {
            "type": "redacted_thinking",
            "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP",
        },
        {"type": "tool_use", "id": "toolu_01Thinking", "name": "get_weather", "input": {"location": "Paris"}},
    ],
    "tool_use",
)


def anthropic_stream(message: dict[str, Any]) -> list[bytes]:
    """The streaming event sequence the reference documents, for the content of ``message``.

    Text arrives as ``text_delta`` pieces, tool input as ``input_json_delta`` pieces split
    mid-token, thinking as ``thinking_delta`` then ``signature_delta``; a ``ping`` sits in between.
    """
    usage = message["usage"]
    start_usage = dict(usage, output_tokens=1)
    events = [
        sse(
            {
                "type": "message_start",
                "message": dict(message, content=[], stop_reason=None, usage=start_usage),
            },
            "message_start",
        )
    ]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            events.append(
                sse(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                    "content_block_start",
                )
            )
            if index == 0:
                events.append(sse({"type": "ping"}, "ping"))
            text = block["text"]
            for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                events.append(
                    sse(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                        "content_block_delta",
                    )
                )
        elif kind == "tool_use":
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            events.append(
                sse(
                    {"type": "content_block_start", "index": index, "content_block": start},
                    "content_block_start",
                )
            )
            raw = json.dumps(block["input"])
            for piece in ("", raw[:5], raw[5:11], raw[11:]):
                events.append(
                    sse(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                        "content_block_delta",
                    )
                )
        elif kind == "thinking":
            events.append(
                sse(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "thinking", "thinking": ""},
                    },
                    "content_block_start",
                )
            )
            thought = block["thinking"]
            for piece in (thought[:10], thought[10:]):
                events.append(
                    sse(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "thinking_delta", "thinking": piece},
                        },
                        "content_block_delta",
                    )
                )
            events.append(
                sse(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": block["signature"]},
                    },
                    "content_block_delta",
                )
            )
        else:  # redacted_thinking arrives whole in its start event
            events.append(
                sse(
                    {"type": "content_block_start", "index": index, "content_block": block},
                    "content_block_start",
                )
            )
        events.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
    events.append(
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
            "message_delta",
        )
    )
    events.append(sse({"type": "message_stop"}, "message_stop"))
    return events


ANTHROPIC_401 = {
    "type": "error",
    "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
}

ANTHROPIC_429 = {
    "type": "error",
    "error": {
        "type": "rate_limit_error",
        "message": "This request would exceed the rate limit for your organization of 50 input tokens per minute.",
    },
}

ANTHROPIC_529 = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
