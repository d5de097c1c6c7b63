"""``[tool.executus.budget_redis]``: where Redis is, and the limits every caller gets.

::

    [tool.executus.budget_redis]
    url = "redis://127.0.0.1:6379/0"   # Redis, shared by every worker; without a url: SQLite, one machine
    window = "1d"                  # the window plain numbers below count in
    max_runs = 500                 # runs a caller may start per window
    max_tokens = 2_000_000         # input + output tokens per window
    max_seconds = 7200             # runtime seconds per window
    max_concurrent = 4             # runs in flight at once
    token_hold = "auto"            # tokens held per run in flight until it ends (or a number)

    [tool.executus.budget_redis.callers."vip-*"]     # a glob pattern
    max_tokens = "unlimited"

    [tool.executus.budget_redis.callers."u-trial"]   # an exact caller id
    max_runs = { "1h" = 10, "1d" = 50 }              # several windows at once

A caller gets the limits of its exact entry in ``callers`` if it has one, else of the first pattern
that matches it (in the order written), else the defaults at the top; a caller's entry replaces
only the limits it names. Every limit is a number (counted in ``window``), ``"unlimited"``, or a
table ``{window = number}``; ``0`` refuses every run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    field_validator,
)

from executus_budget_redis.durations import parse_duration

__all__ = [
    "DEFAULT_INITIAL_HOLD",
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_URL",
    "SECTION",
    "SQLITE_FILE",
    "BudgetRedisSettings",
    "CallerLimits",
    "Duration",
    "ResolvedLimits",
    "WindowLimits",
    "mask_url",
    "resolve_limits",
]

SECTION = "budget_redis"
"""The settings table this battery reads: ``[tool.executus.budget_redis]``."""

DEFAULT_URL = "redis://127.0.0.1:6379/0"
"""Where the battery looks for Redis when no ``url`` is set."""

DEFAULT_KEY_PREFIX = "executus:budget:"
"""What every key the battery writes starts with."""

SQLITE_FILE = "budget.sqlite3"
"""The embedded backend's file, in the executus data directory when no ``path`` is set."""

DEFAULT_INITIAL_HOLD = 4000
"""Tokens held for a caller's run before the caller has a history to average (``token_hold = "auto"``)."""

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written as a number or as ``"45s"``, ``"30m"``, ``"1h"``, ``"1d"``, ``"1w"``."""

IntLimit = NonNegativeInt | Literal["unlimited"] | dict[str, NonNegativeInt]
FloatLimit = NonNegativeFloat | Literal["unlimited"] | dict[str, NonNegativeFloat]


_LIMIT_FORMS = 'a number >= 0, "unlimited", or a table of windows such as { "1h" = 100, "1d" = 1000 }'


def _amount(value: Any, integer: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"a limit is {_LIMIT_FORMS}")
    if integer and value != int(value):
        raise ValueError("this limit counts whole units")
    return int(value) if integer else float(value)


def _limit(integer: bool) -> Any:
    """A validator that reads one limit and says, in one line, what went wrong."""

    def validate(value: Any) -> Any:
        if value is None or value == "unlimited":
            return value
        if isinstance(value, dict):
            table = {}
            for window, amount in value.items():
                try:
                    parse_duration(window)
                except ValueError as exc:
                    raise ValueError(f"window {window!r}: {exc}") from None
                try:
                    table[str(window)] = _amount(amount, integer)
                except ValueError:
                    kind = "a whole number" if integer else "a number"
                    raise ValueError(
                        f"window {window!r}: its limit is {kind} >= 0 (got {amount!r})"
                    ) from None
            return table
        return _amount(value, integer)

    return BeforeValidator(validate)


def _hold(value: Any) -> Any:
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            'token_hold is "auto" (the caller\'s recent average) or a whole number of tokens >= 0'
        )
    return value


def _concurrent(value: Any) -> Any:
    if value is None or value == "unlimited":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError('max_concurrent is a whole number >= 0 or "unlimited"')
    return value


IntLimitSetting = Annotated[IntLimit | None, _limit(True)]
FloatLimitSetting = Annotated[FloatLimit | None, _limit(False)]
ConcurrentSetting = Annotated[NonNegativeInt | Literal["unlimited"] | None, BeforeValidator(_concurrent)]
HoldSetting = Annotated[NonNegativeInt | Literal["auto"] | None, BeforeValidator(_hold)]


class CallerLimits(BaseModel):
    """The limits of one entry in ``callers``; a limit left out comes from the defaults."""

    model_config = ConfigDict(extra="forbid")

    window: Duration | None = Field(None, description="The window plain-number limits count in.")
    max_runs: IntLimitSetting = Field(None, description="Runs admitted per window.")
    max_tokens: IntLimitSetting = Field(
        None, description="Input + output tokens per window (thinking is part of output)."
    )
    max_seconds: FloatLimitSetting = Field(None, description="Runtime seconds per window.")
    max_concurrent: ConcurrentSetting = Field(None, description="Runs in flight at once.")
    token_hold: HoldSetting = Field(None, description='Tokens held per run in flight: "auto" or a number.')


class BudgetRedisSettings(BaseModel):
    """The whole ``[tool.executus.budget_redis]`` table: the connection, the defaults, and ``callers``."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "redis", "sqlite"] = Field(
        "auto",
        description="Where usage lives: redis (every process that shares it), sqlite (one machine), or "
        "auto: redis when a url is set, else sqlite.",
    )
    url: str = Field(DEFAULT_URL, description="The Redis URL (redis://, rediss:// or unix://).")
    path: str | None = Field(
        None, description="The SQLite file of the embedded backend (default: budget.sqlite3 in the data dir)."
    )
    key_prefix: str = Field(DEFAULT_KEY_PREFIX, min_length=1, description="Prefix of every key written.")
    timeout: float = Field(
        2.0, gt=0, description="Seconds to connect to Redis or wait for one answer (keep under port_timeout)."
    )
    max_connections: int = Field(50, ge=1, description="Connections in this process's pool.")
    window: Duration = Field(86400.0, description="The window plain-number limits count in (default 1d).")
    max_runs: IntLimitSetting = Field(None, description="Runs a caller may start per window.")
    max_tokens: IntLimitSetting = Field(
        None, description="Input + output tokens per window (thinking is part of output)."
    )
    max_seconds: FloatLimitSetting = Field(None, description="Runtime seconds per window.")
    max_concurrent: ConcurrentSetting = Field(None, description="Runs a caller may have in flight at once.")
    token_hold: NonNegativeInt | Literal["auto"] = Field(
        "auto",
        description="Tokens held for each run in flight until it ends: auto (the caller's recent average "
        "tokens per run) or a number. Admission counts holds, so max_tokens cannot be overrun by runs "
        "that stay within their hold.",
    )
    token_hold_initial: NonNegativeInt = Field(
        DEFAULT_INITIAL_HOLD, description='The hold of a caller with no recent runs (token_hold = "auto").'
    )
    run_ttl: Duration = Field(
        86400.0,
        description="How long a finished run's id is remembered, so a retried commit is never charged twice.",
    )
    slot_ttl: Duration = Field(
        3600.0, description="How long an in-flight slot lives if its run never commits (a crashed worker)."
    )
    spool_limit: int = Field(
        10_000, ge=0, description="Callers whose unmetered usage is kept in memory while Redis is away."
    )
    callers: dict[str, CallerLimits] = Field(
        default_factory=dict, description="Per-caller limits, by exact caller id or glob pattern."
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(
                f"a Redis URL starts with redis://, rediss:// or unix:// (got {scheme or 'no'} scheme); "
                "for example redis://127.0.0.1:6379/0"
            )
        return value

    def masked_url(self) -> str:
        """``url`` without its password, for messages."""
        return mask_url(self.url)

    @property
    def uses_redis(self) -> bool:
        """Whether usage lives in Redis: ``backend = "redis"``, or ``"auto"`` with a ``url`` set."""
        if self.backend == "auto":
            return "url" in self.model_fields_set
        return self.backend == "redis"

    def sqlite_path(self, data_dir: str | Path | None = None) -> Path:
        """The embedded backend's file: ``path``, else ``budget.sqlite3`` in ``data_dir``."""
        if self.path:
            return Path(self.path).expanduser()
        if data_dir is None:
            from executus_core.config import default_data_dir

            data_dir = default_data_dir()
        return Path(data_dir).expanduser() / SQLITE_FILE


@dataclasses.dataclass(frozen=True, slots=True)
class WindowLimits:
    """The limits that count in one window. ``None``: no limit of that kind in this window."""

    seconds: float
    max_runs: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None

    @property
    def millis(self) -> int:
        """The window's length in milliseconds, as Redis keys and TTLs use it."""
        return max(1, round(self.seconds * 1000))


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedLimits:
    """Every limit that applies to one caller, after ``callers`` and the defaults are merged.

    ``windows`` always holds the caller's own ``window`` (usage is metered there even without a
    limit, so ``executus budget show`` has something to show), plus every window a limit table
    names, shortest first. ``source`` says where the limits came from, as a person would look it up:
    ``defaults`` or ``callers."vip-*"``.
    """

    caller_id: str
    source: str
    windows: tuple[WindowLimits, ...]
    max_concurrent: int | None
    token_hold: int | None = None  # None: the caller's recent average ("auto")

    @property
    def limits_tokens(self) -> bool:
        """Whether any window limits tokens (holds only matter then)."""
        return any(w.max_tokens is not None for w in self.windows)

    def setting(self, name: str) -> str:
        """Where a limit is set, for messages: ``max_runs`` or ``callers."vip-*".max_runs``."""
        return name if self.source == "defaults" else f"{self.source}.{name}"


def _is_pattern(key: str) -> bool:
    return any(ch in key for ch in "*?[")


def _match(config: BudgetRedisSettings, caller_id: str) -> tuple[str, CallerLimits | None]:
    entry = config.callers.get(caller_id)
    if entry is not None:
        return f"callers.{_quote(caller_id)}", entry
    for key, candidate in config.callers.items():
        if _is_pattern(key) and fnmatch.fnmatchcase(caller_id, key):
            return f"callers.{_quote(key)}", candidate
    return "defaults", None


def _quote(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def resolve_limits(config: BudgetRedisSettings, caller_id: str) -> ResolvedLimits:
    """Merge the defaults and the matching ``callers`` entry into the limits of ``caller_id``."""
    source, entry = _match(config, caller_id)

    def pick(name: str) -> Any:
        value = getattr(entry, name, None) if entry is not None else None
        return value if value is not None else getattr(config, name)

    window = pick("window")
    per_window: dict[float, dict[str, float | int]] = {window: {}}
    for name in ("max_runs", "max_tokens", "max_seconds"):
        value = pick(name)
        if value is None or value == "unlimited":
            continue
        table = value if isinstance(value, dict) else {window: value}
        for raw_window, limit in table.items():
            seconds = parse_duration(raw_window) if isinstance(raw_window, str) else float(raw_window)
            per_window.setdefault(seconds, {})[name] = limit
    concurrent = pick("max_concurrent")
    hold = pick("token_hold")
    return ResolvedLimits(
        caller_id=caller_id,
        source=source,
        windows=tuple(
            WindowLimits(
                seconds=seconds,
                max_runs=int(limits["max_runs"]) if "max_runs" in limits else None,
                max_tokens=int(limits["max_tokens"]) if "max_tokens" in limits else None,
                max_seconds=float(limits["max_seconds"]) if "max_seconds" in limits else None,
            )
            for seconds, limits in sorted(per_window.items())
        ),
        max_concurrent=None if concurrent in (None, "unlimited") else int(concurrent),
        token_hold=None if hold in (None, "auto") else int(hold),
    )


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (messages and ``budget show`` never print it)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<a Redis URL that does not parse>"
