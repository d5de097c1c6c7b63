"""Durations as people write them in settings (``"1h"``, ``"1d"``, ``"90m"``) and read them in messages.

::

    >>> parse_duration("1h30m")
    5400.0
    >>> format_duration(11520)
    '3h12m'
    >>> window_phrase(86400)
    'this day'
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "parse_duration", "window_phrase"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_NAMED = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day", 604800.0: "week"}


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string such as ``"45s"``, ``"30m"``, ``"1h30m"``, ``"1d"``, ``"1w"``.

    Units: ``ms``, ``s``, ``m`` (minutes), ``h``, ``d``, ``w``; a bare number is seconds. Raises
    `ValueError` with what was wrong and what is accepted.
    """
    if isinstance(value, bool):
        raise ValueError(f"a duration is a number of seconds or a string like '1h'; got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"{value!r} is not a duration: write seconds (3600) or a number with a unit, "
                    "combined if you like: 500ms, 45s, 30m, 1h, 1h30m, 1d, 1w"
                ) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"a duration is a number of seconds or a string like '1h'; got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be more than 0 seconds; got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short, readable duration: ``0.4s``, ``45s``, ``12m5s``, ``3h12m``, ``2d3h``.

    Under ten seconds it keeps a decimal, so sub-second windows stay readable; above, it rounds up
    to the second and shows the two largest units.
    """
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}".rstrip("0").rstrip(".") + "s"
    left = math.ceil(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count or parts:
            parts.append(f"{count}{unit}")
    shown = parts[:2]
    while len(shown) > 1 and shown[-1].startswith("0"):
        shown.pop()
    return "".join(shown)


def window_phrase(seconds: float) -> str:
    """How a reason names a window: ``this hour``, ``this day``, or ``this 30m window``."""
    named = _NAMED.get(float(seconds))
    return f"this {named}" if named else f"this {format_duration(seconds)} window"
