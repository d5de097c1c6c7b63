"""`RunCritic`: the `Critic` port object. It starts a `RunCriticHandle` per run and keeps the
handles of running and recently finished runs, so a host can read what the critic decided::

    critic = executor.ports.critic[1]          # ("critic", RunCritic)
    result = await executor.run(agent, "...", caller_id="u1")
    for decision in critic.decisions(result.run_id):
        print(decision.kind, decision.reason)
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from executus_core import RunInfo
from executus_critic.decisions import Decision
from executus_critic.handle import RunCriticHandle
from executus_critic.policy import Policy
from executus_critic.settings import CriticSettings

__all__ = ["RunCritic"]


class RunCritic:
    """Watches runs: nudges at the soft timeout, cuts hangs and loops, extends healthy slow runs.

    Args:
        settings: the ``[tool.executus.critic]`` settings (defaults when omitted).
        deadline_poll: the core's ``deadline_poll``: extensions are decided two polls ahead.
        history: how many finished runs' handles (and decisions) to keep, newest last.
        on_decision: called with ``(handle, decision)`` for every decision, from whichever task or
            thread made it (the run's task, or the core's deadline watcher); it must be quick and
            must not call back into the handle's ``record_*``/``steer``/``deadline``.
        clock: a monotonic clock in seconds (tests pass a fake one).

    Example (a critic built in code, as a host's tests may do; an installed battery needs none of
    this)::

        from executus_core.testing import PortPlugin

        critic = RunCritic(CriticSettings(hard_factor=4, hang_timeout=60))
        async with Executor(plugins=[PortPlugin("critic", critic=critic)], entry_points=False) as ex:
            ...
    """

    def __init__(
        self,
        settings: CriticSettings | None = None,
        *,
        deadline_poll: float = 0.25,
        history: int = 256,
        on_decision: Callable[[RunCriticHandle, Decision], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else CriticSettings()
        self.deadline_poll = deadline_poll
        self.history = max(history, 0)
        self.on_decision = on_decision
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, RunCriticHandle] = {}
        self._finished: collections.OrderedDict[str, RunCriticHandle] = collections.OrderedDict()

    def policy(self, soft_timeout: float) -> Policy:
        """The timings a run with ``soft_timeout`` gets."""
        return Policy.resolve(self.settings, soft_timeout, deadline_poll=self.deadline_poll)

    async def monitor(self, info: RunInfo, soft_timeout: float) -> RunCriticHandle:
        """Start watching a run (a resumed run gets a fresh handle: its clock starts again)."""
        with self._lock:
            parent = self._running.get(info.parent_run_id) if info.parent_run_id else None
        handle = RunCriticHandle(
            info,
            self.policy(soft_timeout),
            self.settings.messages,
            clock=self._clock,
            on_decision=self.on_decision,
            on_stop=self._finished_run,
            parent=parent,
        )
        with self._lock:
            self._finished.pop(info.run_id, None)
            self._running[info.run_id] = handle
        if parent is not None:
            parent._adopt(info.run_id)
        return handle

    def _finished_run(self, handle: RunCriticHandle) -> None:
        with self._lock:
            if self._running.get(handle.run_id) is handle:
                del self._running[handle.run_id]
            if self.history:
                self._finished[handle.run_id] = handle
                self._finished.move_to_end(handle.run_id)
                while len(self._finished) > self.history:
                    self._finished.popitem(last=False)

    def handle(self, run_id: str) -> RunCriticHandle | None:
        """The handle of a running or recently finished run, or ``None``."""
        with self._lock:
            return self._running.get(run_id) or self._finished.get(run_id)

    def decisions(self, run_id: str) -> list[Decision]:
        """What the critic decided about a running or recently finished run (empty: nothing, or unknown)."""
        handle = self.handle(run_id)
        return handle.decisions if handle is not None else []

    @property
    def running(self) -> list[RunCriticHandle]:
        """The handles of the runs being watched now."""
        with self._lock:
            return list(self._running.values())

    @property
    def finished(self) -> list[RunCriticHandle]:
        """The handles of the last ``history`` runs that ended, oldest first."""
        with self._lock:
            return list(self._finished.values())
