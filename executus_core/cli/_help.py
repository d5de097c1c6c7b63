"""Help text for people, not Python: no ``<bool>``, ``<list[str]>`` or ``{ARG}`` in ``--help``.

Recent typer releases print each parameter's Python annotation as its type (``--json <bool>``,
``AGENT <list[str]>``) and wrap required arguments in braces in the usage line (``{AGENT}``).
Command-line users know click's conventions — ``--limit INTEGER``, a flag with no type, ``AGENT``
and ``[AGENT]`` — so `use_plain_help_types` puts those back for every command of the ``executus``
app, battery commands included. It changes only how help is drawn, never how arguments parse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import typer.core

__all__ = ["use_plain_help_types"]

_applied = False
_NAMES: dict[Any, str] = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH", bool: "BOOLEAN"}


def _option_type(self: Any, ctx: Any) -> str | None:
    if self.metavar is not None:
        return str(self.metavar) or None
    if self.is_flag or self.count:
        return None  # a flag takes no value: nothing to show
    desc = getattr(self, "type_descriptor", None)
    if desc is None:
        return None
    if getattr(desc, "is_choice", False):
        return "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
    annotation: Any = desc.annotation
    if getattr(desc, "is_list", False):
        annotation = next(iter(get_args(annotation)), str)
    if getattr(desc, "is_path", False):
        return "PATH"
    return _NAMES.get(annotation, "TEXT")


def _argument_type(self: Any, ctx: Any) -> str | None:
    return None  # the name column shows the argument's name (or metavar) already


def _argument_usage(self: Any) -> str:
    name = str(self.metavar) if self.metavar is not None else self.name.upper()
    if self.metavar is None:
        name = name if self.required else f"[{name}]"
        if self.nargs != 1:
            name += "..."
    return name


def use_plain_help_types() -> None:
    """Make typer draw help the way click does (see the module docstring); safe to call again."""
    global _applied
    if _applied:
        return
    option: Any = typer.core.TyperOption
    argument: Any = typer.core.TyperArgument
    if hasattr(option, "display_type_rich"):
        option.display_type_rich = _option_type
    if hasattr(argument, "display_type_rich"):
        argument.display_type_rich = _argument_type
    if hasattr(argument, "_usage_display_name"):
        argument._usage_display_name = _argument_usage
    _applied = True
