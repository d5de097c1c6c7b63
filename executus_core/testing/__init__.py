"""Helpers for testing hosts and batteries: `ScriptedModel`, and the conformance suites of each port.

``from executus_core.testing import ScriptedModel`` gives a model that replays responses::

    model = ScriptedModel([
        ModelResponse(tool_calls=[ToolCall(id="1", name="add", arguments={"a": 1, "b": 2})]),
        ModelResponse(text="3"),
    ])
    result = await executor.run(Agent(name="t", model=model, tools=[add]), "1+2?", caller_id="test")
    assert model.requests[1].messages[-1].content == "3"
"""

from executus_core.providers.scripted import ScriptedModel

__all__ = ["ScriptedModel"]
