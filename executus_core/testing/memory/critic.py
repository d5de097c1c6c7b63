"""`MemoryCritic`: a soft timeout that steers and a hard deadline that activity may extend."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from executus_core.config import Settings
from executus_core.hookspecs import hookimpl
from executus_core.ports import Critic
from executus_core.types import Message, RunInfo, utcnow

__all__ = ["MemoryCritic", "MemoryCriticHandle"]


class MemoryCriticHandle:
    """The `CriticHandle` of `MemoryCritic` for one run; every method takes a lock, so the run's
    task, the core's deadline watcher and other threads may call it at once."""

    def __init__(self, critic: MemoryCritic, info: RunInfo, soft_timeout: float) -> None:
        self.critic = critic
        self.info = info
        self.soft_timeout = soft_timeout
        self.started = utcnow()
        self.last_activity = self.started
        self.steps: list[int] = []
        self.tools: list[tuple[str, dict[str, Any]]] = []
        self.steered: list[Message] = []
        self.stopped = False
        self._soft_hits = 0
        self._lock = threading.Lock()

    def record_step(self, iteration: int) -> None:
        """A model call finished: the run is alive."""
        with self._lock:
            self.steps.append(iteration)
            self.last_activity = utcnow()

    def record_tool_start(self, name: str, arguments: Mapping[str, Any]) -> None:
        """A tool call started: the run is alive."""
        with self._lock:
            self.tools.append((name, dict(arguments)))
            self.last_activity = utcnow()

    def steer(self) -> list[Message]:
        """One message each time another ``soft_timeout`` has passed; each is returned once."""
        with self._lock:
            if self.stopped or self.soft_timeout <= 0:
                return []
            elapsed = (utcnow() - self.started).total_seconds()
            hits = int(elapsed // self.soft_timeout)
            if hits <= self._soft_hits:
                return []
            self._soft_hits = hits
            message = Message.user(self.critic.steer_message.format(seconds=round(elapsed)))
            self.steered.append(message)
            return [message]

    def deadline(self) -> datetime | None:
        """``hard_timeout`` after the start, pushed to ``idle_timeout`` after the last step or tool
        start while there is activity, never past ``max_runtime``; ``None`` once stopped."""
        critic = self.critic
        with self._lock:
            if self.stopped:
                return None
            when: datetime | None = None
            if critic.hard_timeout is not None:
                when = self.started + timedelta(seconds=critic.hard_timeout)
            if critic.idle_timeout is not None:
                alive_until = self.last_activity + timedelta(seconds=critic.idle_timeout)
                when = alive_until if when is None else max(when, alive_until)
            if critic.max_runtime is not None:
                cap = self.started + timedelta(seconds=critic.max_runtime)
                when = cap if when is None else min(when, cap)
            return when

    def stop(self) -> None:
        """The run ended."""
        with self._lock:
            self.stopped = True


class MemoryCritic:
    """A `Critic` with a soft timeout that steers and a hard deadline that activity may extend.

    - Each time another ``soft_timeout`` (given by the executor) passes, ``steer()`` returns one
      message asking the model to wrap up.
    - ``deadline()`` is ``hard_timeout`` seconds after the start; with ``idle_timeout``, every step
      or tool start moves it to at least ``idle_timeout`` seconds after that activity, so a slow
      run that keeps making progress goes on while a hung one is cut off; ``max_runtime`` caps it.
      With none of the three the critic sets no deadline and the executor's ``hard_timeout`` holds.

    ``critic.handles`` maps each run id to its `MemoryCriticHandle`.
    """

    def __init__(
        self,
        *,
        hard_timeout: float | None = None,
        idle_timeout: float | None = None,
        max_runtime: float | None = None,
        steer_message: str = (
            "You have been working on this for {seconds} seconds. Finish now: give your best answer "
            "with what you have."
        ),
        name: str = "memory_critic",
    ) -> None:
        self.executus_name = name
        self.hard_timeout = hard_timeout
        self.idle_timeout = idle_timeout
        self.max_runtime = max_runtime
        self.steer_message = steer_message
        self.handles: dict[str, MemoryCriticHandle] = {}
        self._lock = threading.Lock()

    @hookimpl
    def executus_critic(self, settings: Settings) -> Critic:
        return self

    async def monitor(self, info: RunInfo, soft_timeout: float) -> MemoryCriticHandle:
        """Start watching a run."""
        handle = MemoryCriticHandle(self, info, soft_timeout)
        with self._lock:
            self.handles[info.run_id] = handle
        return handle
