"""executus, core alone: an `Executor` (no installed batteries), the ``openai:`` provider, an async tool.

``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` point the provider at the bench server, as a user would
point it at any OpenAI-compatible server. The provider's defaults are kept (a pool of 100
connections, 60 s pool timeout), which match the bare loop's httpx2 client.
"""

from __future__ import annotations

import os

from bench.clients import ToolCounter
from bench.workload import INSTRUCTIONS, PROMPT, TOOL_DESCRIPTION, model_name, tool_result
from executus_core import Agent, Executor, tool

LABEL = "executus"
PACKAGES = ["executus-core", "pydantic", "pydantic-core", "httpx2", "httpcore2", "orjson", "pluggy"]
PROVIDER = "executus_core.providers.openai"


class ExecutusClient:
    """One `Executor` for the whole process, one `Agent` per run length (model ``openai:bench-<n>``)."""

    model_provider = PROVIDER

    def __init__(self, settings: dict[str, object] | None = None) -> None:
        self.counter = counter = ToolCounter()

        @tool(name="lookup", description=TOOL_DESCRIPTION)
        async def lookup(key: str) -> str:
            counter.calls += 1
            return tool_result(key)

        self.tool = lookup
        # Core alone: the built-in plugins only, whatever batteries this environment has.
        self.executor = Executor(entry_points=False, settings=settings)
        self.agents: dict[int, Agent] = {}

    def agent(self, n: int) -> Agent:
        agent = self.agents.get(n)
        if agent is None:
            agent = self.agents[n] = Agent(
                name="bench",
                instructions=INSTRUCTIONS,
                model=f"openai:{model_name(n)}",
                tools=[self.tool],
                max_steps=n + 2,
            )
        return agent

    async def run(self, n: int) -> str | None:
        result = await self.executor.run(self.agent(n), PROMPT, caller_id="bench")
        if not result.ok:
            raise RuntimeError(f"executus: run ended {result.status.value}: {result.error}")
        return result.output

    async def aclose(self) -> None:
        await self.executor.shutdown()


async def create(base_url: str) -> ExecutusClient:
    """The executus client; its provider reads OPENAI_BASE_URL, which is set here to ``base_url``."""
    os.environ["OPENAI_BASE_URL"] = base_url
    os.environ["OPENAI_API_KEY"] = "bench"
    return ExecutusClient()
