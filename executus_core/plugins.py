"""The plugin manager: loads plugins, calls the hooks once, and says which plugin broke.

One `pluggy.PluginManager` per `Executor` (never a global), so two executors in one process share
nothing. Plugins come from three places, registered in this order:

1. the core's built-ins (`DEFAULT_PLUGINS`), exactly like any battery;
2. installed distributions' ``executus`` entry points (unless ``entry_points=False``);
3. objects the host passes as ``Executor(plugins=[...])``.

pluggy calls the most recently registered first, so a host's plugin is asked before a battery's,
and a battery's before a built-in's.

Each plugin is checked as it is registered, like pytest does with pluggy's ``check_pending()``: a
function marked ``@hookimpl`` whose name is no executus hook (``executus_checkpoint``, a typo of
``executus_checkpointer``) makes the plugin broken, with the hook named and the close match
suggested, instead of a plugin that shows as enabled and fills no port. Host objects of one class
(or one ``executus_name``) register side by side (``Audit``, ``Audit#2``; ``disable = ["Audit"]``
turns off all of them), and a name in ``disable`` that no plugin has is
warned about with the close matches (`ExecutusWarning`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.metadata
import logging
import types
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import pluggy

from executus_core import hookspecs
from executus_core.errors import ExecutusWarning, PluginError
from executus_core.secrets import mask_exception, mask_text

__all__ = [
    "DEFAULT_PLUGINS",
    "PORT_HOOKS",
    "PluginRecord",
    "build_plugin_manager",
    "call_hook",
    "unknown_disabled",
]

log = logging.getLogger("executus.plugins")

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
    """One plugin as `executus plugins` lists it.

    ``origin`` says where it came from: ``builtin`` (the core's own), ``entry_point`` (an installed
    distribution) or ``host`` (an object passed as ``Executor(plugins=[...])``). ``error`` is
    masked (`executus_core.secrets`): it never holds a password or a key.
    """

    name: str
    distribution: str | None
    module: str | None
    status: Literal["enabled", "disabled", "broken"]
    error: str | None = None
    ports: list[str] = dataclasses.field(default_factory=list)
    version: str | None = None
    origin: Literal["builtin", "entry_point", "host"] = "entry_point"

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-able data (``executus plugins --json``), its error masked."""
        data = dataclasses.asdict(self)
        if self.error is not None:
            data["error"] = mask_text(self.error)
        return data


def _ports_of(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """The ports the plugin really fills: its registered hook implementations, not its attribute names."""
    hooks = {caller.name for caller in pm.get_hookcallers(plugin) or ()}
    return [port for hook, port in PORT_HOOKS.items() if hook in hooks]


def _explicit_name(plugin: object) -> str | None:
    name = getattr(plugin, "executus_name", None)
    return name if isinstance(name, str) and name else None


def _name_of(plugin: object) -> str:
    name = _explicit_name(plugin)
    if name is not None:
        return name
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    return type(plugin).__name__


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object, name: str) -> str | None:
    """Why ``plugin`` implements a hook that does not exist, or ``None`` (pluggy's ``check_pending``,
    for one plugin, so the error names it)."""
    unknown = [
        caller.name
        for caller in pm.get_hookcallers(plugin) or ()
        if not caller.has_spec()
        and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls())
    ]
    if not unknown:
        return None
    hooks = sorted(n for n in dir(hookspecs) if n.startswith("executus_"))
    parts = []
    for hook in sorted(unknown):
        close = difflib.get_close_matches(hook, hooks, n=1, cutoff=0.6)
        parts.append(f"{hook!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (
        f"plugin {name!r} implements {'an unknown hook' if len(parts) == 1 else 'unknown hooks'} "
        f"{', '.join(parts)}; executus has no such hook, so it would never be called. Rename it to "
        f"one of: {', '.join(hooks)}"
    )


def _unmarked_hooks(plugin: object) -> list[str]:
    """Hook names the plugin defines without the ``@hookimpl`` marker: pluggy would never call them."""
    if isinstance(plugin, type):
        return []
    found = []
    for hook in PORT_HOOKS:
        function = getattr(plugin, hook, None)
        if callable(function) and not hasattr(function, f"{hookspecs.PROJECT_NAME}_impl"):
            found.append(hook)
    return found


def installed_plugin_names() -> list[str]:
    """The names of every installed ``executus`` entry point (nothing is imported)."""
    try:
        return sorted({ep.name for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME)})
    except Exception:  # a broken distribution's metadata must not stop the executor
        return []


def unknown_disabled(disable: Iterable[str], known: Iterable[str]) -> list[str]:
    """A warning for each name in ``disable`` that no plugin has, with the close matches.

    Names are compared as written; the suggestion also tries the name with ``-`` read as ``_`` and
    without an ``executus-`` prefix, so a distribution's spelling (``budget-redis``,
    ``executus-budget-redis``) points at its plugin name (``budget_redis``).
    """
    names = sorted(set(known))
    out = []
    for wrong in dict.fromkeys(disable):
        if wrong in names:
            continue
        spelled = wrong.strip().lower().replace("-", "_").removeprefix("executus_")
        close = [spelled] if spelled in names else difflib.get_close_matches(spelled, names, n=3, cutoff=0.6)
        hint = (
            f"did you mean {' or '.join(repr(c) for c in close)}?"
            if close
            else f"the plugins here are {', '.join(names) or 'none'}"
        )
        out.append(
            f"disable names {wrong!r}, but no plugin has that name, so nothing was disabled by it; "
            f"{hint} (set in Executor(disable=), EXECUTUS_DISABLE or [tool.executus] disable; "
            "`executus plugins` lists the names)"
        )
    return out


def build_plugin_manager(
    *,
    plugins: Sequence[object] = (),
    disable: Iterable[str] = (),
    entry_points: bool = True,
    extra_builtins: Sequence[tuple[str, object]] = (),
) -> tuple[pluggy.PluginManager, list[PluginRecord]]:
    """Load every plugin into a new manager; a plugin that fails to import is recorded as broken.

    A plugin is broken too when it implements a hook that does not exist (a typo), or defines a
    hook without the ``@hookimpl`` marker. Names in ``disable`` that no plugin has (installed or
    passed) are warned about (`ExecutusWarning`) with the close matches.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    disabled = list(disable)
    records: list[PluginRecord] = []
    core_version = _version("executus-core")

    def add(
        name: str,
        load: Callable[[], object],
        dist: str | None,
        module: str | None,
        version: str | None,
        origin: Literal["builtin", "entry_point", "host"],
    ) -> None:
        if name in disabled:
            records.append(PluginRecord(name, dist, module, "disabled", version=version, origin=origin))
            return
        try:
            plugin = load()
            pm.register(plugin, name=name)
        except Exception as exc:
            error = mask_text(f"{type(exc).__name__}: {exc}")
            records.append(PluginRecord(name, dist, module, "broken", error, version=version, origin=origin))
            return
        problem = _unknown_hooks(pm, plugin, name)
        unmarked = _unmarked_hooks(plugin)
        if problem is None and unmarked:
            problem = (
                f"plugin {name!r} defines {', '.join(unmarked)} without the @hookimpl marker, so it would "
                "never be called; decorate it with @executus_core.hookimpl"
            )
        if problem is not None:
            pm.unregister(plugin)
            records.append(
                PluginRecord(name, dist, module, "broken", problem, version=version, origin=origin)
            )
            return
        records.append(
            PluginRecord(
                name, dist, module, "enabled", ports=_ports_of(pm, plugin), version=version, origin=origin
            )
        )

    for name, module in DEFAULT_PLUGINS.items():
        add(
            name,
            functools.partial(importlib.import_module, module),
            "executus-core",
            module,
            core_version,
            "builtin",
        )
    for name, plugin in extra_builtins:
        add(
            name,
            functools.partial(_same, plugin),
            "executus-core",
            type(plugin).__module__,
            core_version,
            "builtin",
        )
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
            add(ep.name, ep.load, dist, ep.value, version, "entry_point")
    taken = {r.name for r in records}
    seen: set[int] = set()
    for plugin in plugins:
        module = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
        if id(plugin) in seen:
            message = f"the plugin object {_name_of(plugin)!r} is passed twice in plugins=; it is used once"
            log.warning("%s", message)
            warnings.warn(f"executus: {message}", ExecutusWarning, stacklevel=3)
            continue
        seen.add(id(plugin))
        base = _name_of(plugin)
        name = _unique(base, taken)
        taken.add(name)
        if base in disabled and name not in disabled:
            records.append(PluginRecord(name, None, module, "disabled", origin="host"))
            continue
        add(name, functools.partial(_same, plugin), None, module, None, "host")
    pm.check_pending()  # every plugin was checked as it came; this is pluggy's own last word
    known = {r.name for r in records}
    if not known.issuperset(disabled):  # only then is the installed list worth reading
        known |= set(installed_plugin_names())
    for message in unknown_disabled(disabled, known):
        log.warning("%s", message)
        warnings.warn(f"executus: {message}", ExecutusWarning, stacklevel=3)
    return pm, records


def _unique(base: str, taken: set[str]) -> str:
    """``base``, or ``base#2``, ``base#3``... : host objects of one class (or one ``executus_name``)
    register side by side, each under a name of its own."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}#{n}"
    return name


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
            message = mask_text(
                f"plugin {name!r}{f' (distribution {dist})' if dist else ''} failed in {hook_name}: "
                f"{type(exc).__name__}: {exc}"
            )
            if record is not None:
                record.status = "broken"
                record.error = mask_text(f"{hook_name}: {type(exc).__name__}: {exc}")
            if not skip_broken:
                advice = (
                    "fix it or its settings in your code, leave it out of Executor(plugins=[...]), or "
                    f"disable it (EXECUTUS_DISABLE={name})"
                    if record is not None and record.origin == "host"
                    else f"fix its settings, uninstall it, or disable it (EXECUTUS_DISABLE={name})"
                )
                # the plugin's exception stays the cause (its traceback helps its author), masked
                raise PluginError(
                    message + "\n  " + advice, plugin=name, distribution=dist
                ) from mask_exception(exc)
            if on_skip is not None:
                on_skip(message)
            continue
        if value is not None:
            out.append((name, value))
            if firstresult:
                break
    return out


def broken_error(records: list[PluginRecord]) -> PluginError | None:
    """A `PluginError` naming every plugin that failed to load, or ``None``.

    The advice fits where each came from: an installed distribution can be reinstalled, uninstalled
    or disabled; an object the host passed in ``plugins=`` is fixed in the host's code.
    """
    broken = [r for r in records if r.status == "broken"]
    if not broken:
        return None
    lines = [
        f"{r.name}{f' (distribution {r.distribution})' if r.distribution else ''}"
        f"{' (passed in plugins=)' if r.origin == 'host' else ''}: {r.error}"
        for r in broken
    ]
    advice = []
    if any(r.origin != "host" for r in broken):
        advice.append(
            "an installed plugin: reinstall or uninstall it, disable it (EXECUTUS_DISABLE=name), or set "
            "skip_broken_plugins = true"
        )
    if any(r.origin == "host" for r in broken):
        advice.append("an object passed in Executor(plugins=[...]): fix it in your code, or leave it out")
    first = broken[0]
    return PluginError(
        "cannot start: plugin failed to load:\n  " + "\n  ".join(lines) + "\n  " + "\n  ".join(advice),
        plugin=first.name,
        distribution=first.distribution,
    )
