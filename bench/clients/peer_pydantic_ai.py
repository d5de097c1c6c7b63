"""pydantic-ai with its OpenAI Chat Completions model, pointed at the bench server."""

from __future__ import annotations

from typing import Any

from bench.clients import ToolCounter
from bench.workload import INSTRUCTIONS, PROMPT, TOOL_DESCRIPTION, model_name, tool_result

LABEL = "pydantic-ai"
PACKAGES = ["pydantic-ai-slim", "openai", "httpx2", "pydantic"]


class PydanticAIClient:
    """One ``AsyncOpenAI`` client (retries off, 60 s timeout), one ``Agent`` per run length."""

    def __init__(self, base_url: str) -> None:
        from openai import AsyncOpenAI
        from pydantic_ai.providers.openai import OpenAIProvider

        self.provider = OpenAIProvider(
            openai_client=AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=60.0)
        )
        self.counter = counter = ToolCounter()

        async def lookup(key: str) -> str:
            counter.calls += 1
            return tool_result(key)

        lookup.__doc__ = TOOL_DESCRIPTION
        self.tool = lookup
        self.agents: dict[int, Any] = {}

    def agent(self, n: int) -> Any:
        from pydantic_ai import Agent, Tool
        from pydantic_ai.models.openai import OpenAIChatModel

        if n not in self.agents:
            self.agents[n] = Agent(
                OpenAIChatModel(model_name(n), provider=self.provider),
                instructions=INSTRUCTIONS,
                tools=[Tool(self.tool, takes_ctx=False, name="lookup")],
            )
        return self.agents[n]

    async def run(self, n: int) -> str | None:
        from pydantic_ai.usage import UsageLimits

        result = await self.agent(n).run(PROMPT, usage_limits=UsageLimits(request_limit=n + 2))
        return result.output

    async def aclose(self) -> None:
        await self.provider.client.close()


async def create(base_url: str) -> PydanticAIClient:
    """The pydantic-ai client for the server at ``base_url``; ImportError if it is not installed."""
    return PydanticAIClient(base_url)
