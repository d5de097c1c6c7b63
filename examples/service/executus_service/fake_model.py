"""A loopback OpenAI-compatible server that plays a scripted ledger clerk, for the demo and the tests.

``POST /v1/chat/completions`` (Chat Completions, not streamed) reads the first user message, which
asks for ledger entries in the form ``record N payments for account NAME`` (case-insensitive;
anything else gets a plain answer), and answers from the conversation alone, so any number of
workers can share it and a resumed run gets the answer its transcript calls for:

- while fewer than N ``append_ledger`` results are in the conversation, it calls ``append_ledger``
  for the next entries, two calls in parallel in one step (amounts 1, 2, ..., N);
- then it answers ``Recorded N payments for account NAME (TOTAL in all).``

Every tool call gets a fresh random id, as a real model's would: a stale worker that asks the model
again gets calls the run never saved, which is what the proof test looks for. Usage is reported so
budgets have tokens to count (``prompt_tokens`` grows with the conversation; 20 completion tokens).

``GET /v1/stats`` tells, per account, how many completions the model served and their tokens: what
the model was really asked, whatever a worker that died before saving it remembers.

Run: ``python -m executus_service fake-model [--port 0]``; it prints ``READY <base url>`` once
listening on 127.0.0.1, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["TOOL_NAME", "expected_output", "make_app", "parse_request", "reply_for"]

TOOL_NAME = "append_ledger"
PARALLEL_CALLS = 2
COMPLETION_TOKENS = 20

_REQUEST = re.compile(r"record\s+(\d+)\s+payments?\s+for\s+account\s+([A-Za-z0-9_.-]+)", re.IGNORECASE)


def parse_request(prompt: str) -> tuple[int, str] | None:
    """``(entries, account)`` from a prompt such as ``Record 3 payments for account acme``, or None."""
    found = _REQUEST.search(prompt)
    if found is None:
        return None
    return int(found.group(1)), found.group(2)


def expected_output(entries: int, account: str) -> str:
    """The final answer the fake model gives once all ``entries`` are recorded."""
    return f"Recorded {entries} payments for account {account} ({entries * (entries + 1) // 2} in all)."


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def reply_for(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message the clerk answers ``messages`` with (a pure function of them)."""
    prompt = next((_text(m) for m in messages if m.get("role") == "user"), "")
    request = parse_request(prompt)
    if request is None:
        return {
            "role": "assistant",
            "content": 'I keep ledgers. Ask me to "record 3 payments for account acme".',
        }
    entries, account = request
    done = sum(1 for m in messages if m.get("role") == "tool")
    if done >= entries:
        return {"role": "assistant", "content": expected_output(entries, account)}
    calls = []
    for amount in range(done + 1, min(entries, done + PARALLEL_CALLS) + 1):
        arguments = f'{{"account": "{account}", "amount": {amount}}}'
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:20]}",
                "type": "function",
                "function": {"name": TOOL_NAME, "arguments": arguments},
            }
        )
    return {"role": "assistant", "content": None, "tool_calls": calls}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "code": None}}, status_code=status
    )


async def _completions(request: Request) -> JSONResponse:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the request body is not JSON")
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return _error(400, "a chat completion request needs a messages list")
    if body.get("stream"):
        return _error(400, "this fake model answers without streaming; leave ModelSettings.stream off")
    messages = body["messages"]
    message = reply_for(messages)
    prompt_tokens = 50 + 10 * len(messages)
    prompt = next((_text(m) for m in messages if m.get("role") == "user"), "")
    asked = parse_request(prompt)
    served = request.app.state.served.setdefault(asked[1] if asked else "", {"calls": 0, "tokens": 0})
    served["calls"] += 1
    served["tokens"] += prompt_tokens + COMPLETION_TOKENS
    return JSONResponse(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": prompt_tokens + COMPLETION_TOKENS,
            },
        }
    )


async def _stats(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.served)


async def _models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [{"id": "clerk", "object": "model", "owned_by": "fake"}]})


def make_app() -> Starlette:
    """The ASGI app of the fake model (``/v1/chat/completions``, ``/v1/models``, ``/v1/stats``)."""
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _completions, methods=["POST"]),
            Route("/v1/models", _models, methods=["GET"]),
            Route("/v1/stats", _stats, methods=["GET"]),
        ]
    )
    app.state.served = {}
    return app
