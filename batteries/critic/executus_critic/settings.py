"""``[tool.executus.critic]``: when the critic nudges a run, when it cuts one, and what it says.

::

    [tool.executus.critic]
    steer_after = 1.0        # nudge at the soft timeout (a fraction of it), or "45s"
    hang_timeout = 180       # nothing started or finished for this long: a hang, the run is cut
    # The hard deadline is the core's hard_timeout unless one of these two is set:
    hard_factor = 4.0        # the critic's hard deadline: 4 x the soft timeout ...
    # hard_timeout = 600     # ... or this many seconds after the start
    max_extension = 240      # a run still making progress at that deadline may go on this much longer
    # max_runtime = 1800     # and never past this many seconds, extensions included
    loop_threshold = 4       # the same tool with the same arguments this many times in a row: a loop
    stall_steps = 6          # this many steps in a row without a new tool call: a loop too

    [tool.executus.critic.messages]
    wrap_up = "You have used {elapsed:.0f} seconds. Answer now with what you have."

TOML has no ``null``: ``0`` or ``false`` turns a check off (``hang_timeout = 0``). The same keys in
the environment: ``EXECUTUS_CRITIC__HANG_TIMEOUT=30``, ``EXECUTUS_CRITIC__STEER_AFTER=45s``.
"""

from __future__ import annotations

import math
import re
import string
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["SECTION", "CriticMessages", "CriticSettings", "steer_after_seconds"]

SECTION = "critic"
"""The name of the settings table (``[tool.executus.critic]``) and of the plugin."""

_SECONDS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*s\s*$")

# A bare number above this is almost surely meant as seconds: refuse it rather than nudge at 90 x soft.
_MAX_FRACTION = 10.0

# The placeholders each template may use, with sample values that prove a template formats. Each
# placeholder always has the type of its sample; the second set holds the edge values a run can give.
PLACEHOLDERS: dict[str, dict[str, Any]] = {
    "wrap_up": {"elapsed": 95.0, "soft_timeout": 90.0},
    "repeat": {"tool": "search", "count": 4, "arguments": '{"query":"x"}'},
    "stall": {"steps": 6},
}
_EDGE_SAMPLES: dict[str, dict[str, Any]] = {
    "wrap_up": {"elapsed": 0.0, "soft_timeout": 1e-3},
    "repeat": {"tool": "", "count": 2, "arguments": ""},
    "stall": {"steps": 1},
}


def _check_template(name: str, template: str) -> str:
    """Refuse a template that could fail when the critic formats it during a run.

    Only bare placeholders are accepted (``{tool}``, ``{count:d}``, ``{arguments!r}``): an index or
    attribute (``{tool[4]}``, ``{tool.upper}``) or a placeholder inside a format spec
    (``{tool:{count}}``) depends on the value a run gives, so it may format with the sample and fail
    on the next tool's name. The template is then formatted against sample values of each
    placeholder's type, so a format spec that cannot fit the type (``{elapsed:d}``) is refused too.
    """
    allowed = PLACEHOLDERS[name]
    names = ", ".join("{" + key + "}" for key in allowed)
    try:
        parsed = [
            (field, spec) for _, field, spec, _ in string.Formatter().parse(template) if field is not None
        ]
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}); write braces as {{{{ and }}}}") from None
    for field, spec in parsed:
        key = re.split(r"[.\[]", field, maxsplit=1)[0]
        shown = "{" + field + "}" if field else "{}"
        if key not in allowed:
            raise ValueError(f"unknown placeholder {shown}; this message can use {names}")
        if field != key:
            raise ValueError(
                f"placeholder {shown} indexes or looks up an attribute of {{{key}}}, which depends on the "
                f"run (a shorter tool name, say) and can fail mid-run; use {{{key}}} itself"
            )
        if spec and ("{" in spec or "}" in spec):
            raise ValueError(
                f"placeholder {shown} has a placeholder in its format spec ({spec!r}), which depends on "
                "the run; write the spec out"
            )
    for sample in (allowed, _EDGE_SAMPLES[name]):
        try:
            template.format(**sample)
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            raise ValueError(f"does not format ({type(exc).__name__}: {exc}); it can use {names}") from None
    return template


class CriticMessages(BaseModel):
    """``[tool.executus.critic.messages]``: what the critic tells the model, as `str.format` templates.

    Each message reaches the model as a ``user`` message before its next step (see the battery's
    docs for why ``user``). A template that names an unknown placeholder is a settings error.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    wrap_up: str = Field(
        "You have been working on this for {elapsed:.0f} seconds, longer than planned. Wrap up now: "
        "call a tool only if you cannot answer without it, then give your best final answer with what "
        "you have.",
        description="The nudge at the soft timeout. Placeholders: {elapsed}, {soft_timeout} (seconds).",
    )
    repeat: str = Field(
        "You have called {tool} with the same arguments {count} times in a row; calling it again will "
        "not give a different result. You are in a loop: do not repeat that call. Try something "
        "different, or give your final answer with what you have. If you repeat it again, the run "
        "will be stopped.",
        description="A tool called with the same arguments loop_threshold times in a row. "
        "Placeholders: {tool}, {count}, {arguments}.",
    )
    stall: str = Field(
        "Your last {steps} steps only repeated tool calls you had already made, so you are going in "
        "circles. Try something different, or give your final answer with what you have. If you keep "
        "repeating yourself, the run will be stopped.",
        description="stall_steps steps in a row without a new tool call. Placeholder: {steps}.",
    )

    @field_validator("wrap_up", "repeat", "stall")
    @classmethod
    def _formats(cls, value: str, info: Any) -> str:
        return _check_template(info.field_name, value)


def _off_when_zero(value: Any) -> Any:
    """TOML has no null: ``0`` and ``false`` turn a check off."""
    if value is False or (isinstance(value, int | float) and not isinstance(value, bool) and value == 0):
        return None
    return value


class CriticSettings(BaseModel):
    """``[tool.executus.critic]``. Durations are seconds; the soft timeout is the run's own
    (``Agent.soft_timeout`` or the executor's ``soft_timeout``), given to the critic by the core."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True, description="False: the critic watches no run (the core's hard_timeout applies)."
    )
    steer_after: float | str | None = Field(
        1.0,
        description="When to nudge the model to wrap up: a number is a fraction of the soft timeout "
        '(1.0: at the soft timeout), "45s" is seconds after the start; 0 or false: never.',
    )
    hard_factor: float | None = Field(
        None,
        gt=0,
        description="Set the hard deadline to soft timeout x this (unless hard_timeout is set); "
        "unset: the core's hard_timeout holds.",
    )
    hard_timeout: float | None = Field(
        None,
        gt=0,
        description="Set the hard deadline to this many seconds after the start; unset: hard_factor, "
        "or the core's hard_timeout.",
    )
    hang_timeout: float | None = Field(
        180.0,
        gt=0,
        description="No model call and no tool call started or finished for this long: the run hangs "
        "and is cut; 0: never.",
    )
    max_extension: float = Field(
        240.0,
        ge=0,
        description="How far past the critic's hard deadline a run still making progress may go; 0: never.",
    )
    max_runtime: float | None = Field(
        None,
        gt=0,
        description="A cap on the critic's hard deadline, extensions included; unset: none.",
    )
    loop_threshold: int | None = Field(
        4,
        ge=2,
        description="The same tool with the same arguments this many times in a row is a loop; 0: never.",
    )
    stall_steps: int | None = Field(
        6,
        ge=1,
        description="This many steps in a row that make no new tool call are a loop; 0: never.",
    )
    messages: CriticMessages = Field(default_factory=CriticMessages)

    @field_validator(
        "hard_factor",
        "hard_timeout",
        "hang_timeout",
        "max_runtime",
        "loop_threshold",
        "stall_steps",
        mode="before",
    )
    @classmethod
    def _zero_is_off(cls, value: Any) -> Any:
        return _off_when_zero(value)

    @field_validator("hard_timeout", "hang_timeout", "max_runtime", "max_extension", "hard_factor")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number of seconds (leave it unset for none)")
        return value

    @field_validator("steer_after", mode="before")
    @classmethod
    def _steer_after(cls, value: Any) -> float | str | None:
        value = _off_when_zero(value)
        if value is None:
            return None
        if value is True:
            raise ValueError('write a fraction of the soft timeout (1.0) or seconds ("45s"), not true')
        if isinstance(value, str):
            matched = _SECONDS.match(value)
            if matched:
                seconds = float(matched.group(1))
                return None if seconds == 0 else f"{seconds:g}s"
            try:
                value = float(value)
            except ValueError:
                raise ValueError(
                    f'{value!r} is neither a fraction of the soft timeout (0.8) nor seconds ("45s")'
                ) from None
            if value == 0:
                return None
        if not isinstance(value, int | float):
            raise ValueError('write a fraction of the soft timeout (1.0) or seconds ("45s")')
        fraction = float(value)
        if not math.isfinite(fraction) or fraction < 0:
            raise ValueError("a fraction of the soft timeout must be a positive number")
        if fraction > _MAX_FRACTION:
            raise ValueError(
                f'{value:g} would mean {value:g} x the soft timeout; for seconds write "{value:g}s", '
                "or give a fraction such as 0.8"
            )
        return fraction

    @model_validator(mode="after")
    def _runtime_caps_an_own_deadline(self) -> CriticSettings:
        if self.max_runtime is not None and self.hard_factor is None and self.hard_timeout is None:
            raise ValueError(
                "max_runtime caps the critic's own hard deadline, and there is none: set hard_factor or "
                "hard_timeout too (without them the core's hard_timeout holds; lower that instead)"
            )
        return self


def steer_after_seconds(steer_after: float | str | None, soft_timeout: float) -> float | None:
    """Seconds after the start at which to nudge, for a run with ``soft_timeout``; ``None``: never.

    >>> steer_after_seconds(0.5, 90.0), steer_after_seconds("45s", 90.0)
    (45.0, 45.0)
    """
    if steer_after is None:
        return None
    if isinstance(steer_after, str):
        return float(steer_after[:-1])
    return steer_after * soft_timeout
