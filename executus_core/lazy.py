"""Public names a package loads on first use, so importing it (as every command and `Executor()`
does for each installed battery) costs no heavy dependency until one of those names is used.

In a package's ``__init__.py``::

    _LAZY = {"SqlAudit": "executus_audit_sql.audit", ...}   # name -> the module that defines it
    __getattr__, __dir__ = lazy_exports(globals(), _LAZY)

and, for type checkers, the same names imported under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` that import each of ``names`` from its module on
    first use (and keep it in ``namespace``, so the import happens once)."""
    package = namespace.get("__name__", "?")

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
