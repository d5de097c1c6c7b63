"""executus-viewer: a page to watch runs live and read any run's trace, over the audit database.

An ASGI app that a Starlette or FastAPI host mounts under a path of its own::

    from starlette.routing import Mount
    from executus_viewer import make_viewer

    app = Starlette(routes=[..., Mount("/viewer", app=make_viewer())])

It reads what `executus-audit-sql` recorded (SQLite or PostgreSQL), so it sees every run of every
worker that writes to the same database. It has no authentication of its own: it is off unless a
host mounts it, behind the host's own (docs/viewer.md shows a middleware). ``executus viewer``
serves it alone on loopback.
"""

from typing import TYPE_CHECKING

from executus_core.lazy import lazy_exports

if TYPE_CHECKING:
    from executus_viewer.actions import (
        APPROVAL_UNAVAILABLE,
        ActionOutcome,
        ExecutorActions,
        RunActions,
        approval_available,
    )
    from executus_viewer.app import WorkerLookup, make_viewer
    from executus_viewer.settings import ViewerSettings
    from executus_viewer.trace import Trace, Waiting, build_trace, waiting_for

# The public names are imported on first use (PEP 562): loading the plugin imports this package
# first, and a command that never touches the battery's port should not pay for its dependencies.
_LAZY = {
    "APPROVAL_UNAVAILABLE": "executus_viewer.actions",
    "ActionOutcome": "executus_viewer.actions",
    "ExecutorActions": "executus_viewer.actions",
    "RunActions": "executus_viewer.actions",
    "approval_available": "executus_viewer.actions",
    "WorkerLookup": "executus_viewer.app",
    "make_viewer": "executus_viewer.app",
    "ViewerSettings": "executus_viewer.settings",
    "Trace": "executus_viewer.trace",
    "Waiting": "executus_viewer.trace",
    "build_trace": "executus_viewer.trace",
    "waiting_for": "executus_viewer.trace",
}


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)


__all__ = [
    "APPROVAL_UNAVAILABLE",
    "ActionOutcome",
    "ExecutorActions",
    "RunActions",
    "Trace",
    "ViewerSettings",
    "Waiting",
    "WorkerLookup",
    "approval_available",
    "build_trace",
    "make_viewer",
    "waiting_for",
]

__version__ = "0.1.0"
