"""The scripted model: replays `ModelResponse`s, for tests and for offline runs.

``ScriptedModel([...])`` replays its responses in order, one per call, and keeps each request in
``.requests``. An item may also be an exception (raised at that call) or a callable taking the
`ModelRequest` and returning a response. ``scripted:path/to/replay.json`` builds one from a file
that holds a list of responses (``{"text": ..., "tool_calls": [...]}``); file replays restart for
every run, so one replay file serves any number of runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from executus_core.config import Settings
from executus_core.errors import ModelNotFound, ProviderResponseError
from executus_core.types import ModelRequest, ModelResponse

__all__ = ["ScriptedModel", "create_scripted"]

Step = ModelResponse | BaseException | Callable[[ModelRequest], ModelResponse]


class ScriptedModel:
    """A `Model` that replays the given responses.

    Args:
        responses: `ModelResponse` objects (or dicts of their fields), exceptions, or callables.
        per_run: pick the response by the step number of the run being asked (restarts for every
            run) instead of by call count.
        delay: seconds to wait before each answer, to stand in for a real model's latency.
        id: the model id shown in run output.
    """

    def __init__(
        self,
        responses: Sequence[Step | dict[str, Any]],
        *,
        per_run: bool = False,
        delay: float = 0.0,
        id: str = "scripted",
    ) -> None:
        self.responses: list[Step] = [
            ModelResponse.model_validate(r) if isinstance(r, dict) else r for r in responses
        ]
        self.requests: list[ModelRequest] = []
        self.per_run = per_run
        self.delay = delay
        self.id = id
        self._next = 0

    def _index(self, request: ModelRequest) -> int:
        if not self.per_run:
            index, self._next = self._next, self._next + 1
            return index
        # Every run starts a transcript of its own: its answers so far are this call's index. (Not
        # "since the last user message": a critic's steering message is a user message too.)
        return sum(message.role == "assistant" for message in request.messages)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """The next scripted step: a copy of its response, its exception raised, or its callable's answer."""
        # The request's messages are the live transcript: keep a snapshot of what this call saw.
        self.requests.append(dataclasses.replace(request, messages=list(request.messages)))
        index = self._index(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if index >= len(self.responses):
            raise ProviderResponseError(
                f"the scripted model {self.id} has no response left for call {index + 1} "
                f"(it holds {len(self.responses)})",
                provider="scripted",
            )
        step = self.responses[index]
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, ModelResponse):
            return step.model_copy(deep=True)
        return step(request)


def create_scripted(name: str, settings: Settings) -> ScriptedModel:
    """Factory for ``scripted:<path to a JSON replay file>``."""
    path = Path(name).expanduser()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelNotFound(f"scripted replay file {str(path)!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot read scripted replay file {str(path)!r}: {exc}") from None
    responses = data.get("responses") if isinstance(data, dict) else data
    if not isinstance(responses, list):
        raise ModelNotFound(f"{str(path)!r} must hold a list of responses (or {{'responses': [...]}})")
    return ScriptedModel(responses, per_run=True, id=f"scripted:{name}")
