"""The bare loop: the httpx2 agent loop a user would write by hand.

It keeps the transcript as a list of dicts and posts it with ``json=``, so httpx2 re-serializes the
whole history on every step, as such code does.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2

from bench.clients import ToolCounter
from bench.workload import INSTRUCTIONS, PROMPT, TOOL_SCHEMA, model_name, tool_result

LABEL = "bare httpx2 loop"
PACKAGES = ["httpx2", "httpcore2"]


class BareClient:
    """``httpx2.AsyncClient`` with its default pool; a 60 s timeout so 1,000 queued runs are not cut off."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx2.AsyncClient(
            base_url=base_url, headers={"authorization": "Bearer bench"}, timeout=60.0
        )
        self.counter = ToolCounter()
        self.tools = {"lookup": self.lookup}

    async def lookup(self, key: str) -> str:
        """The trivial async tool."""
        self.counter.calls += 1
        return tool_result(key)

    async def run(self, n: int) -> str | None:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": PROMPT},
        ]
        for _ in range(n + 2):
            response = await self.http.post(
                "/chat/completions",
                json={"model": model_name(n), "messages": messages, "tools": [TOOL_SCHEMA]},
            )
            response.raise_for_status()
            message = response.json()["choices"][0]["message"]
            messages.append(message)
            if not message.get("tool_calls"):
                return message.get("content")
            for call in message["tool_calls"]:
                function = call["function"]
                result = await self.tools[function["name"]](**json.loads(function["arguments"]))
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
        raise RuntimeError(f"bare loop: no answer after {n + 2} model calls")

    async def aclose(self) -> None:
        await self.http.aclose()


async def create(base_url: str) -> BareClient:
    """The bare loop for the server at ``base_url``."""
    return BareClient(base_url)
