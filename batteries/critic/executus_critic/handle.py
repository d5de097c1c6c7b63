"""`RunCriticHandle`: the critic's watch over one run.

The core calls ``record_step`` after each model call, ``record_tool_start`` as each tool call
starts, and ``steer`` right before each model call, all from the run's task; its deadline watcher
calls ``deadline`` every ``deadline_poll`` seconds from another task (and a host may call it from
another thread). Every method takes the handle's lock for a few attribute updates and never blocks;
none raises, and after ``stop`` they do nothing (``deadline`` keeps answering the last deadline).

What the handle decides, and where:

- ``steer``: the wrap-up nudge once ``steer_at`` has passed, and the loop warnings queued below.
- ``record_tool_start``: the same tool with the same arguments ``loop_threshold`` times in a row.
- ``record_step`` / ``steer``: ``stall_steps`` steps in a row whose tool calls were all repeats.
- ``deadline``: a hang (nothing for ``hang_timeout``), and extensions for a run still making
  progress as its deadline nears. Both are decided where the core looks, so no timer is needed.

A loop first gets one warning (a steering message); if the model loops again after it has seen
the warning, the deadline is pulled in to now and the core ends the run as ``timeout``.

A run delegated from another run watched by the same critic (``agent__``/``skill__`` through the
in-process palette) passes its liveness up: while the child makes progress, its parent, which is
waiting in that tool call, does not count as hung. While a child is being watched, the parent's hang
check waits for it: if the child hangs, the child is cut (and the parent's model reads the tool
error), rather than the whole tree at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import orjson

from executus_core import Message, RunInfo
from executus_core.types import utcnow
from executus_critic.decisions import Decision, DecisionKind
from executus_critic.policy import Policy
from executus_critic.settings import CriticMessages

__all__ = ["RunCriticHandle"]

log = logging.getLogger("executus.critic")

# Distinct tool calls remembered per run to tell a new call from a repeat (the stall check), as
# 16-byte digests whatever the size of the arguments; past this many, further calls count as new,
# so a huge run can only be warned later, never wrongly.
_MAX_SEEN = 4096
_SHOWN_ARGUMENTS = 200  # characters of the arguments a loop warning quotes

_DEFAULT_MESSAGES = {name: field.default for name, field in CriticMessages.model_fields.items()}
_LAST_RESORT = {
    "wrap_up": "You have been working on this longer than planned. Wrap up now and give your final answer.",
    "repeat": "You are repeating the same tool call. Try something different, or give your final answer.",
    "stall": "You are going in circles. Try something different, or give your final answer.",
}


def _canonical(arguments: Mapping[str, Any]) -> bytes:
    """The arguments as bytes that are equal exactly when the calls are the same (keys sorted)."""
    try:
        return orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=repr)
    except Exception:  # not JSON-able even with repr(): the repr is still a fair identity
        return repr(arguments).encode(errors="replace")


def _secs(value: float) -> str:
    """Seconds for people: milliseconds below 10 s, tenths above."""
    return f"{round(value, 3 if value < 10 else 1):g} s"


class RunCriticHandle:
    """The critic's live link to one run; see the module docstring for what each method decides.

    Args:
        info: the run, as the core described it to ``monitor``.
        policy: the resolved timings for this run.
        messages: the templates of the steering messages.
        clock: a monotonic clock in seconds (tests pass a fake one).
        on_decision: called with ``(handle, decision)`` after each decision, outside the lock.
        on_stop: called with the handle once, when ``stop`` is first called.
        parent: the handle of the run that delegated this one, if the same critic watches it.
    """

    def __init__(
        self,
        info: RunInfo,
        policy: Policy,
        messages: CriticMessages,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_decision: Callable[[RunCriticHandle, Decision], None] | None = None,
        on_stop: Callable[[RunCriticHandle], None] | None = None,
        parent: RunCriticHandle | None = None,
    ) -> None:
        self.run_id = info.run_id
        self.info = info
        self.policy = policy
        self._messages = messages
        self._clock = clock
        self._on_decision = on_decision
        self._on_stop = on_stop
        self._parent = parent
        self._lock = threading.Lock()
        self._start = clock()
        self._started_at = utcnow()
        # The deadline as seconds after the start (None: the core's hard timeout), and as the
        # datetime handed out: computed once per change, so every poll returns the same instant.
        self._deadline: float | None = policy.hard_timeout
        self._deadline_at: datetime | None = self._when(self._deadline)
        self._last_activity = 0.0
        self._last_what = "the start of the run"
        self._pending: list[Message] = []
        self._nudged = False
        self._warning_pending = False  # a loop warning is queued and the model has not seen it yet
        self._warned = False  # the model has seen a loop warning: the next loop is cut
        self._ended = False  # hang or cut: the deadline is final
        self._stopped = False
        # the loop check: the current streak of identical calls
        self._last_call: tuple[str, bytes] | None = None
        self._streak = 0
        # the stall check
        self._seen: set[tuple[str, bytes]] = set()
        self._step_open = False
        self._step_calls = 0
        self._step_new = False
        self._stalled = 0
        self._decisions: list[Decision] = []
        self._unannounced: list[Decision] = []
        self._children: set[str] = set()  # delegated runs being watched now
        self._bad_templates: set[str] = set()  # message templates already warned about

    # -- what the host reads -----------------------------------------------------------------

    @property
    def decisions(self) -> list[Decision]:
        """Every decision about this run so far, oldest first (a copy)."""
        with self._lock:
            return list(self._decisions)

    @property
    def reason(self) -> str | None:
        """The reason of the latest decision, or ``None`` when the critic has not acted."""
        with self._lock:
            return self._decisions[-1].reason if self._decisions else None

    @property
    def stopped(self) -> bool:
        """True once ``stop`` was called."""
        return self._stopped

    def __repr__(self) -> str:
        return f"RunCriticHandle(run_id={self.run_id!r}, decisions={len(self._decisions)})"

    # -- the port ------------------------------------------------------------------------------

    def record_step(self, iteration: int) -> None:
        """A model call finished (``iteration`` counts from 1)."""
        with self._lock:
            now = self._clock() - self._start
            if self._stopped:
                return
            self._close_step(now)
            self._step_open = True
            self._step_calls = 0
            self._step_new = False
            self._touch(now, f"step {iteration}")
        if self._unannounced:
            self._announce()
        parent = self._parent  # one read: stop() may clear it from another thread
        if parent is not None:
            parent._child_alive(self.run_id)

    def record_tool_start(self, name: str, arguments: Mapping[str, Any]) -> None:
        """A tool call started."""
        canonical = _canonical(arguments)
        call = (name, hashlib.blake2b(canonical, digest_size=16).digest())
        with self._lock:
            now = self._clock() - self._start
            if self._stopped:
                return
            self._touch(now, f"tool {name!r} started")
            self._step_calls += 1
            if call not in self._seen:
                self._step_new = True
                if len(self._seen) < _MAX_SEEN:
                    self._seen.add(call)
            if call == self._last_call:
                self._streak += 1
            else:
                self._last_call, self._streak = call, 1
            threshold = self.policy.loop_threshold
            if threshold is not None and self._streak >= threshold:
                shown = canonical.decode(errors="replace")
                if len(shown) > _SHOWN_ARGUMENTS:
                    shown = shown[:_SHOWN_ARGUMENTS] + "…"
                self._runaway(
                    now,
                    DecisionKind.LOOP,
                    f"tool {name!r} was called with the same arguments {self._streak} times in a row",
                    lambda: self._render("repeat", tool=name, count=self._streak, arguments=shown),
                )
        if self._unannounced:
            self._announce()
        parent = self._parent  # one read: stop() may clear it from another thread
        if parent is not None:
            parent._child_alive(self.run_id)

    def steer(self) -> list[Message]:
        """The messages to add before the next model call; each is returned once."""
        with self._lock:
            now = self._clock() - self._start
            if self._stopped:
                return []
            self._close_step(now)
            # The core asks right before each model call: the run's loop is alive and turning.
            self._touch(now, "a model call started")
            steer_at = self.policy.steer_at
            if not self._nudged and not self._ended and steer_at is not None and now >= steer_at:
                self._nudged = True
                self._pending.append(
                    Message.user(self._render("wrap_up", elapsed=now, soft_timeout=self.policy.soft_timeout))
                )
                self._decide(
                    now,
                    DecisionKind.WRAP_UP,
                    f"the run passed {_secs(steer_at)} (soft timeout {_secs(self.policy.soft_timeout)}): "
                    "the model is asked to wrap up",
                )
            if not self._pending:
                out: list[Message] = []
            else:
                out, self._pending = self._pending, []
                if self._warning_pending:
                    self._warning_pending, self._warned = False, True
        if self._unannounced:
            self._announce()
        parent = self._parent  # one read: stop() may clear it from another thread
        if parent is not None:
            parent._child_alive(self.run_id)
        return out

    def deadline(self) -> datetime | None:
        """The run's deadline (timezone-aware), or ``None`` while the core's hard timeout holds."""
        with self._lock:
            now = self._clock() - self._start
            if not self._stopped and not self._ended:
                self._check_hang(now)
                if not self._ended:
                    self._maybe_extend(now)
            answer = self._deadline_at
        if self._unannounced:
            self._announce()
        return answer

    def stop(self) -> None:
        """The run ended: stop watching it. Later calls do nothing and never raise."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._pending = []
            self._seen = set()  # the only state that grows with the run: let it go now
            self._children = set()
            parent, self._parent = self._parent, None
        if parent is not None:
            parent._release(self.run_id)
        if self._on_stop is not None:
            try:
                self._on_stop(self)
            except Exception:
                log.exception("executus-critic: on_stop failed for run %s", self.run_id)

    def _adopt(self, child_run_id: str) -> None:
        """A run this one delegated to is being watched: hangs down there are the child's to cut."""
        with self._lock:
            if not self._stopped:
                self._children.add(child_run_id)

    def _release(self, child_run_id: str) -> None:
        """A delegated run ended: its tool call returns to this run, which is alive again."""
        with self._lock:
            now = self._clock() - self._start
            self._children.discard(child_run_id)
            if not self._stopped and not self._ended:
                self._touch(now, f"delegated run {child_run_id} ended")

    def _child_alive(self, child_run_id: str) -> None:
        """A run this one delegated to made progress: this run, waiting on it, is alive too."""
        with self._lock:
            now = self._clock() - self._start
            if self._stopped or self._ended:
                return
            self._touch(now, f"delegated run {child_run_id} made progress")
        parent = self._parent
        if parent is not None:
            parent._child_alive(child_run_id)

    # -- decisions (called with the lock held) -------------------------------------------------

    def _touch(self, now: float, what: str) -> None:
        if now >= self._last_activity:
            self._last_activity = now
            self._last_what = what

    def _when(self, offset: float | None) -> datetime | None:
        return None if offset is None else self._started_at + timedelta(seconds=offset)

    def _set_deadline(self, offset: float) -> None:
        self._deadline = offset
        self._deadline_at = self._when(offset)

    def _decide(self, now: float, kind: DecisionKind, reason: str) -> None:
        decision = Decision(
            kind=kind,
            reason=reason,
            at=self._started_at + timedelta(seconds=now),
            elapsed=now,
            deadline=self._deadline_at,
        )
        self._decisions.append(decision)
        self._unannounced.append(decision)

    def _close_step(self, now: float) -> None:
        """Count the step whose tool calls have all started: did it make a new call?"""
        if not self._step_open:
            return
        self._step_open = False
        if self._step_calls == 0:
            return
        if self._step_new:
            self._stalled = 0
            return
        self._stalled += 1
        limit = self.policy.stall_steps
        if limit is not None and self._stalled >= limit:
            steps = self._stalled
            self._runaway(
                now,
                DecisionKind.STALL,
                f"{steps} steps in a row made no new tool call",
                lambda: self._render("stall", steps=steps),
            )

    def _render(self, which: str, **values: Any) -> str:
        """The steering message ``which`` filled with ``values``; never raises.

        Settings validation refuses templates that can fail, but a `CriticMessages` can be built
        without it (``model_construct``): a template that fails here falls back to the default
        text, with a warning, instead of breaking the core's call into the critic.
        """
        template = getattr(self._messages, which, None)
        try:
            return str(template).format(**values)
        except Exception as exc:
            if which not in self._bad_templates:
                self._bad_templates.add(which)
                log.warning(
                    "executus-critic: the %s message template %r does not format (%s: %s); the default "
                    "text is used instead. Fix [tool.executus.critic.messages] %s",
                    which,
                    template,
                    type(exc).__name__,
                    exc,
                    which,
                )
        try:
            return str(_DEFAULT_MESSAGES[which]).format(**values)
        except Exception:  # the defaults are known to format; this is the last line of defence
            return _LAST_RESORT[which]

    def _looping(self) -> bool:
        threshold, limit = self.policy.loop_threshold, self.policy.stall_steps
        return (
            self._warning_pending
            or (threshold is not None and self._streak >= threshold)
            or (limit is not None and self._stalled >= limit)
        )

    def _runaway(self, now: float, kind: DecisionKind, what: str, message: Callable[[], str]) -> None:
        """A loop: warn the model once; if it loops again after seeing the warning, cut the run."""
        if self._ended or self._warning_pending:
            return  # already cut, or the warning has not reached the model yet
        if self._warned:
            self._ended = True
            self._set_deadline(min(now, self._deadline) if self._deadline is not None else now)
            self._decide(
                now,
                DecisionKind.CUT,
                f"{what} after the model was told it is looping: the run is stopped",
            )
            return
        self._warning_pending = True
        self._pending.append(Message.user(message()))
        self._decide(now, kind, f"{what}: the model is told it is looping")

    def _check_hang(self, now: float) -> None:
        hang = self.policy.hang_timeout
        if hang is None or self._children:
            return
        idle = now - self._last_activity
        if idle < hang:
            return
        self._ended = True
        # The moment the run became a hang: already past, so the core ends the run at once.
        cut = self._last_activity + hang
        self._set_deadline(min(cut, self._deadline) if self._deadline is not None else cut)
        self._decide(
            now,
            DecisionKind.HANG,
            f"nothing started or finished for {_secs(idle)} since {self._last_what} "
            f"(hang_timeout {_secs(hang)}): the run is stopped",
        )

    def _maybe_extend(self, now: float) -> None:
        deadline, latest = self._deadline, self.policy.latest
        if deadline is None or latest is None or deadline >= latest:
            return
        left = deadline - now
        if left <= 0 or left > self.policy.lead:
            return  # not near yet; or already passed, and the core is ending the run
        window = self.policy.progress_window
        idle = now - self._last_activity
        if idle >= window or self._looping():
            return
        new = min(latest, now + window)
        if new <= deadline:
            return
        self._set_deadline(new)
        self._decide(
            now,
            DecisionKind.EXTEND,
            f"still making progress at the deadline ({self._last_what} {_secs(idle)} ago): the deadline "
            f"moves from {_secs(deadline)} to {_secs(new)} after the start (at most {_secs(latest)})",
        )

    # -- telling the host (outside the lock) ---------------------------------------------------

    def _announce(self) -> None:
        with self._lock:
            fresh, self._unannounced = self._unannounced, []
        for decision in fresh:
            level = logging.WARNING if decision.ends_run else logging.INFO
            log.log(level, "critic: run %s: %s: %s", self.run_id, decision.kind.value, decision.reason)
            if self._on_decision is not None:
                try:
                    self._on_decision(self, decision)
                except Exception:
                    log.exception("executus-critic: on_decision failed for run %s", self.run_id)
