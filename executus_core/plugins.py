"""The plugin manager: loads plugins, calls the hooks once, and says which plugin broke.

One `pluggy.PluginManager` per `Executor` (never a global), so two executors in one process share
nothing. Plugins come from three places, registered in this order:

1. the core's built-ins (`DEFAULT_PLUGINS`), exactly like any battery;
2. installed distributions' ``executus`` entry points (unless ``entry_points=False``);
3. objects the host passes as ``Executor(plugins=[...])``.

pluggy calls the most recently registered first, so a host's plugin is asked before a battery's,
and a battery's before a built-in's.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import pluggy

from executus_core import hookspecs
from executus_core.errors import PluginError

__all__ = ["DEFAULT_PLUGINS", "PORT_HOOKS", "PluginRecord", "build_plugin_manager", "call_hook"]

# name -> module of the core's own plugins
DEFAULT_PLUGINS: dict[str, str] = {
    "models": "executus_core.providers",
    "tools": "executus_core.tools",
    "delivery": "executus_core.delivery",
}

# hook name -> the port (or registry) it fills, as `executus plugins` shows it
PORT_HOOKS: dict[str, str] = {
    "executus_audit": "audit",
    "executus_budget": "budget",
    "executus_critic": "critic",
    "executus_checkpointer": "checkpoint",
    "executus_palette": "palette",
    "executus_delivery": "delivery",
    "executus_register_models": "models",
    "executus_register_tools": "tools",
    "executus_register_commands": "commands",
}


@dataclasses.dataclass
class PluginRecord:
    """One plugin as `executus plugins` lists it."""

    name: str
    distribution: str | None
    module: str | None
    status: Literal["enabled", "disabled", "broken"]
    error: str | None = None
    ports: list[str] = dataclasses.field(default_factory=list)
    version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-able data (``executus plugins --json``)."""
        return dataclasses.asdict(self)


def _ports_of(plugin: object) -> list[str]:
    return [port for hook, port in PORT_HOOKS.items() if callable(getattr(plugin, hook, None))]


def _name_of(plugin: object) -> str:
    name = getattr(plugin, "executus_name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    return type(plugin).__name__


def build_plugin_manager(
    *,
    plugins: Sequence[object] = (),
    disable: Iterable[str] = (),
    entry_points: bool = True,
    extra_builtins: Sequence[tuple[str, object]] = (),
) -> tuple[pluggy.PluginManager, list[PluginRecord]]:
    """Load every plugin into a new manager; a plugin that fails to import is recorded as broken."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    disabled = set(disable)
    records: list[PluginRecord] = []
    core_version = _version("executus-core")

    def add(
        name: str, load: Callable[[], object], dist: str | None, module: str | None, version: str | None
    ) -> None:
        if name in disabled:
            records.append(PluginRecord(name, dist, module, "disabled", version=version))
            return
        try:
            plugin = load()
            pm.register(plugin, name=name)
        except Exception as exc:
            records.append(
                PluginRecord(name, dist, module, "broken", f"{type(exc).__name__}: {exc}", version=version)
            )
            return
        records.append(PluginRecord(name, dist, module, "enabled", ports=_ports_of(plugin), version=version))

    for name, module in DEFAULT_PLUGINS.items():
        add(name, functools.partial(importlib.import_module, module), "executus-core", module, core_version)
    for name, plugin in extra_builtins:
        add(name, functools.partial(_same, plugin), "executus-core", type(plugin).__module__, core_version)
    if entry_points:
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME):
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if pm.has_plugin(ep.name) or any(r.name == ep.name for r in records):
                records.append(
                    PluginRecord(
                        ep.name, dist, ep.value, "broken", f"a plugin named {ep.name!r} is already loaded"
                    )
                )
                continue
            add(ep.name, ep.load, dist, ep.value, version)
    for plugin in plugins:
        module = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
        add(_name_of(plugin), functools.partial(_same, plugin), None, module, None)
    return pm, records


def _same(plugin: object) -> object:
    return plugin


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def record_for(records: list[PluginRecord], name: str) -> PluginRecord | None:
    """The first record of the plugin ``name``, or ``None``."""
    return next((r for r in records if r.name == name), None)


def call_hook(
    pm: pluggy.PluginManager,
    records: list[PluginRecord],
    hook_name: str,
    kwargs: dict[str, Any] | Callable[[str], dict[str, Any]],
    *,
    firstresult: bool = False,
    skip_broken: bool = False,
    on_skip: Callable[[str], None] | None = None,
) -> list[tuple[str, Any]]:
    """Call a hook's implementations one by one, in pluggy's order, so a failure names its plugin.

    ``kwargs`` may be a function of the plugin's name, to hand each plugin a callback of its own
    (the registration hooks use it to know who registered what).

    Returns ``(plugin name, value)`` for each implementation that returned something other than
    ``None`` (only the first, with ``firstresult``). A hook that raises makes a `PluginError`, or,
    with ``skip_broken``, marks the plugin broken and goes on.
    """
    hook = getattr(pm.hook, hook_name)
    out: list[tuple[str, Any]] = []
    for impl in reversed(hook.get_hookimpls()):
        name = pm.get_name(impl.plugin) or _name_of(impl.plugin)
        args = kwargs(name) if callable(kwargs) else kwargs
        try:
            value = impl.function(*(args[arg] for arg in impl.argnames))
        except Exception as exc:
            record = record_for(records, name)
            dist = record.distribution if record else None
            message = (
                f"plugin {name!r}{f' (distribution {dist})' if dist else ''} failed in {hook_name}: "
                f"{type(exc).__name__}: {exc}"
            )
            if record is not None:
                record.status, record.error = "broken", f"{hook_name}: {type(exc).__name__}: {exc}"
            if not skip_broken:
                raise PluginError(
                    message
                    + "\n  fix its settings, uninstall it, or disable it (EXECUTUS_DISABLE="
                    + name
                    + ")",
                    plugin=name,
                    distribution=dist,
                ) from exc
            if on_skip is not None:
                on_skip(message)
            continue
        if value is not None:
            out.append((name, value))
            if firstresult:
                break
    return out


def broken_error(records: list[PluginRecord]) -> PluginError | None:
    """A `PluginError` naming every plugin that failed to import, or ``None``."""
    broken = [r for r in records if r.status == "broken"]
    if not broken:
        return None
    lines = [
        f"{r.name}{f' (distribution {r.distribution})' if r.distribution else ''}: {r.error}" for r in broken
    ]
    first = broken[0]
    return PluginError(
        "cannot start: plugin failed to load:\n  "
        + "\n  ".join(lines)
        + "\n  reinstall or uninstall it, disable it (EXECUTUS_DISABLE=name), or set skip_broken_plugins = true",
        plugin=first.name,
        distribution=first.distribution,
    )
