"""`Policy`: the critic's settings resolved into seconds for one run's soft timeout.

Every run gets its own policy when the critic starts watching it, because the steer point and the
hard deadline follow the run's soft timeout (``Agent.soft_timeout``, else the executor's)::

    >>> p = Policy.resolve(CriticSettings(hard_factor=4), soft_timeout=90)
    >>> p.steer_at, p.hard_timeout, p.latest
    (90.0, 360.0, 600.0)
    >>> Policy.resolve(CriticSettings(), soft_timeout=90).hard_timeout is None  # the core's applies
    True

``executus critic policy`` prints the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from executus_critic.settings import CriticSettings, steer_after_seconds

__all__ = ["Policy"]


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """What the critic does to one run, in seconds after the run started.

    Attributes:
        soft_timeout: the run's soft timeout, as the core passed it.
        steer_at: when the model is nudged to wrap up (``None``: never).
        hard_timeout: the hard deadline the run starts with (capped by ``max_runtime``); ``None``
            when neither ``hard_factor`` nor ``hard_timeout`` is set: the core's own hard timeout
            (``Agent.hard_timeout`` or the executor's) then holds, and the critic only ever moves
            the deadline in (a hang, a loop), never out.
        latest: the furthest the deadline may be extended to (``hard_timeout + max_extension``,
            capped by ``max_runtime``); equal to ``hard_timeout`` when extension is off, ``None``
            with ``hard_timeout``.
        hang_timeout: no step and no tool start for this long cuts the run (``None``: never).
        progress_window: a run counts as making progress when its last step or tool start is
            more recent than this (``hang_timeout``, or the soft timeout when hang detection is
            off); each extension gives the run this much more time.
        loop_threshold: identical tool calls in a row that make a loop (``None``: not checked).
        stall_steps: steps in a row without a new tool call that make a loop (``None``: not checked).
        lead: how long before the deadline the critic decides on an extension, so the core's
            deadline watcher (which polls every ``deadline_poll`` seconds) sees it in time.
    """

    soft_timeout: float
    steer_at: float | None
    hard_timeout: float | None
    latest: float | None
    hang_timeout: float | None
    progress_window: float
    loop_threshold: int | None
    stall_steps: int | None
    lead: float

    @classmethod
    def resolve(cls, settings: CriticSettings, soft_timeout: float, *, deadline_poll: float = 0.25) -> Policy:
        """The policy for a run with ``soft_timeout``, under ``settings``.

        ``deadline_poll`` is the core's setting of the same name: extensions are decided two polls
        ahead of the deadline.
        """
        hard: float | None = settings.hard_timeout
        if hard is None and settings.hard_factor is not None:
            hard = soft_timeout * settings.hard_factor
        latest: float | None = None
        if hard is not None:
            latest = hard + settings.max_extension
            if settings.max_runtime is not None:
                hard = min(hard, settings.max_runtime)
                latest = min(latest, settings.max_runtime)
        return cls(
            soft_timeout=soft_timeout,
            steer_at=steer_after_seconds(settings.steer_after, soft_timeout),
            hard_timeout=hard,
            latest=latest,
            hang_timeout=settings.hang_timeout,
            progress_window=settings.hang_timeout if settings.hang_timeout is not None else soft_timeout,
            loop_threshold=settings.loop_threshold,
            stall_steps=settings.stall_steps,
            lead=2 * deadline_poll,
        )

    @property
    def owns_deadline(self) -> bool:
        """True when the critic sets the hard deadline itself (``hard_factor`` or ``hard_timeout``)."""
        return self.hard_timeout is not None

    @property
    def max_extension(self) -> float:
        """Seconds a run making progress may go past ``hard_timeout`` (0 when the core's applies)."""
        if self.hard_timeout is None or self.latest is None:
            return 0.0
        return self.latest - self.hard_timeout

    def as_dict(self) -> dict[str, Any]:
        """The policy as JSON-able data (what ``executus critic policy --json`` prints)."""
        data = dataclasses.asdict(self)
        data["max_extension"] = self.max_extension
        return data
