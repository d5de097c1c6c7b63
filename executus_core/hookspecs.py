"""The hooks a plugin implements: one per port, plus three that register things.

Every hook is called **once, when an `Executor` is built** (the CLI calls the ``register_commands``
hook when it starts), never while a run is going. The port hooks return an object whose methods the
loop calls directly (see `executus_core.ports`). Implement a hook with the `hookimpl` marker::

    from executus_core import hookimpl

    @hookimpl
    def executus_budget(settings):
        cfg = settings.section("my_budget", MyBudgetSettings)
        return MyBudget(cfg) if cfg.enabled else None

and register the module under the ``executus`` entry-point group::

    [project.entry-points.executus]
    my_budget = "my_package.plugin"

Each hook may return ``None``: "not configured, nothing to add". A hook that raises makes the
`Executor` refuse to start with a `PluginError` naming the plugin (unless ``skip_broken_plugins``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

    from executus_core.config import Settings
    from executus_core.ports import Audit, Budget, CheckpointStore, Critic, Delivery, PaletteSource

PROJECT_NAME = "executus"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -------------------------------------------------------------------------------------------------
# Ports: each returns the port object for this executor, or None.
# -------------------------------------------------------------------------------------------------


@hookspec
def executus_audit(settings: Settings) -> Audit | None:
    """Return an `Audit` that records runs, or ``None``.

    Several implementations: **all are used**. Each returned `Audit` starts its own recorder for
    every run, and every recorder gets every event. A recorder that fails is dropped for the rest of
    that run; the others go on.

    :param settings: the executor's settings; read your section with ``settings.section(...)``.
    """


@hookspec
def executus_budget(settings: Settings) -> Budget | None:
    """Return a `Budget` that gates and meters runs per caller, or ``None``.

    Several implementations: **all are used**. Every budget must allow a run (any refusal ends it as
    ``budget_exceeded`` before the first model call), and every budget is charged when it ends. A
    budget whose ``check`` raises anything but `BudgetExceeded`, hangs or answers oddly refuses the
    run too (status ``error``): a broken budget never lets a run through unmetered.

    :param settings: the executor's settings.
    """


@hookspec(firstresult=True)
def executus_critic(settings: Settings) -> Critic | None:
    """Return the `Critic` that watches runs for hangs and runaways, or ``None``.

    ``firstresult``: the first plugin (in pluggy's call order: the last registered first) that
    returns an object is the critic; the others are not asked.

    :param settings: the executor's settings.
    """


@hookspec(firstresult=True)
def executus_checkpointer(settings: Settings) -> CheckpointStore | None:
    """Return the `CheckpointStore` that makes runs durable, or ``None``.

    ``firstresult``: one store serves every run. Without one, a run interrupted by shutdown is lost
    and `Executor.recover` finds nothing.

    :param settings: the executor's settings.
    """


@hookspec
def executus_palette(settings: Settings) -> PaletteSource | None:
    """Return a `PaletteSource` that resolves ``skill_palette`` / ``subagent_palette`` names, or ``None``.

    Several implementations: **all are asked, in order**; the first that resolves a name serves it.
    The built-in in-process palette (agents registered with `Executor.register_agent`) is one of them.

    :param settings: the executor's settings.
    """


@hookspec
def executus_delivery(settings: Settings) -> Delivery | None:
    """Return a `Delivery` for the target kinds it lists in ``kinds``, or ``None``.

    Several implementations: **all are kept**; a target goes to the first whose ``kinds`` holds the
    target's ``kind``. The core ships ``file`` and ``webhook``.

    :param settings: the executor's settings.
    """


# -------------------------------------------------------------------------------------------------
# Registration: each adds named things through the callback it is given.
# -------------------------------------------------------------------------------------------------


@hookspec
def executus_register_models(register: Callable[..., None]) -> None:
    """Register model providers by prefix.

    Several implementations: all are called. Registering a prefix twice keeps the later one (a
    plugin registered after the built-ins overrides them).

    :param register: ``register(prefix, factory, description="")``. ``factory(name, settings)``
        returns a `Model` for the id ``prefix:name``; it is called lazily, the first time a run asks
        for that id, and the model is reused after that.
    """


@hookspec
def executus_register_tools(register: Callable[..., None], settings: Settings) -> None:
    """Register tools that agents can name in ``Agent.tools``.

    Several implementations: all are called. The core registers ``run_status``.

    :param register: ``register(tool)`` with a `Tool` (decorate a function with `@tool`), or
        ``register(toolset)`` with a `ToolSet` that resolves ``"<prefix>:<name>"`` when a run starts.
    :param settings: the executor's settings (``settings.section(...)`` reads the plugin's own
        table); an implementation may leave this parameter out.
    """


@hookspec
def executus_register_commands(cli: Any) -> None:
    """Add subcommands to the ``executus`` command line.

    Called when the CLI starts. A plugin whose hook raises is listed as broken by
    ``executus plugins``; the other commands still work.

    :param cli: the root `typer.Typer` app; add commands or sub-apps
        (``cli.add_typer(runs_app, name="runs")``).
    """
