"""A run that ends interrupted keeps its checkpoint and, where the store can, releases it at once."""

from __future__ import annotations

import asyncio
from typing import Any

from executus_core import Agent, Executor, RunStatus, hookimpl, tool
from executus_core.testing import ScriptedModel

from .conftest import answer, call


class Checkpointer:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def save(self, state: Any) -> None:
        self.calls.append("save")

    async def complete(self) -> None:
        self.calls.append("complete")

    async def fail(self, error: str) -> None:
        self.calls.append("fail")

    async def release(self) -> None:
        self.calls.append("release")


class Store:
    executus_name = "releasing_store"

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def executus_checkpointer(self, settings: Any) -> Any:
        return self

    async def for_run(self, info: Any, agent: Any) -> Checkpointer:
        return Checkpointer(self.calls)

    async def interrupted(self) -> list[Any]:
        return []


started = asyncio.Event()


@tool
async def wait_forever() -> str:
    """Never returns."""
    started.set()
    await asyncio.sleep(3600)
    return "never"


def agent() -> Agent:
    return Agent(
        name="slow", model=ScriptedModel([call("wait_forever"), answer("done")]), tools=[wait_forever]
    )


async def test_shutdown_releases_and_keeps_the_checkpoint() -> None:
    store = Store()
    started.clear()
    ex = Executor(entry_points=False, plugins=[store])
    task = asyncio.ensure_future(ex.run(agent(), "go", caller_id="u1"))
    await asyncio.wait_for(started.wait(), 5)
    await ex.shutdown()
    result = await task
    assert result.status is RunStatus.INTERRUPTED
    assert store.calls[-1] == "release" and "complete" not in store.calls and "fail" not in store.calls


async def test_an_ok_run_completes_and_is_not_released() -> None:
    store = Store()
    async with Executor(entry_points=False, plugins=[store]) as ex:
        result = await ex.run(Agent(name="ok", model=ScriptedModel([answer("hi")])), "go", caller_id="u1")
    assert result.status is RunStatus.OK
    assert store.calls[-1] == "complete" and "release" not in store.calls
