"""The OpenAI Agents SDK on the Chat Completions API, pointed at the bench server.

Tracing is turned off (it would try to export spans to OpenAI); retries are off and the timeout is
60 s, as for every client.
"""

from __future__ import annotations

from typing import Any

from bench.clients import ToolCounter
from bench.workload import INSTRUCTIONS, PROMPT, TOOL_DESCRIPTION, model_name, tool_result

LABEL = "OpenAI Agents SDK"
PACKAGES = ["openai-agents", "openai", "httpx2", "pydantic"]


class AgentsClient:
    """One ``AsyncOpenAI`` client, one ``Agent`` per run length, ``Runner.run`` per run."""

    def __init__(self, base_url: str) -> None:
        from agents import OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
        from openai import AsyncOpenAI

        set_tracing_disabled(True)
        self.Runner = Runner
        self.Model = OpenAIChatCompletionsModel
        self.openai = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=60.0)
        self.counter = counter = ToolCounter()

        @function_tool(name_override="lookup", description_override=TOOL_DESCRIPTION)
        async def lookup(key: str) -> str:
            counter.calls += 1
            return tool_result(key)

        self.tool = lookup
        self.agents: dict[int, Any] = {}

    def agent(self, n: int) -> Any:
        from agents import Agent

        if n not in self.agents:
            self.agents[n] = Agent(
                name="bench",
                instructions=INSTRUCTIONS,
                model=self.Model(model=model_name(n), openai_client=self.openai),
                tools=[self.tool],
            )
        return self.agents[n]

    async def run(self, n: int) -> str | None:
        result = await self.Runner.run(self.agent(n), PROMPT, max_turns=n + 2)
        return result.final_output

    async def aclose(self) -> None:
        await self.openai.close()


async def create(base_url: str) -> AgentsClient:
    """The Agents SDK client for the server at ``base_url``; ImportError if it is not installed."""
    return AgentsClient(base_url)
