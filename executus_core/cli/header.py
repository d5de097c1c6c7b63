"""The run header: which agent runs, for whom, on which model, and which batteries take part.

``executus run`` prints it on stderr before the first model call, so a person knows what the
answer came from: a real model or a scripted replay, the audit trail's database, the budget's
backend — and which installed batteries were left out, and why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from executus_core.types import Agent

if TYPE_CHECKING:
    from executus_core.executor import Executor

__all__ = ["SCRIPTED_NOTE", "describe_batteries", "describe_model", "describe_port"]

SCRIPTED_NOTE = "scripted replay, offline: no model is called"

# Ports field -> the port's name, in the order the header lists them
_PORTS = {
    "audits": "audit",
    "budgets": "budget",
    "checkpoints": "checkpoint",
    "critic": "critic",
    "palettes": "palette",
    "deliveries": "delivery",
}
_FIRST_RESULT = {"critic": "critic", "checkpoint": "checkpoints"}


def _public_url(url: str) -> str:
    # Users put credentials in URLs now and then; never echo them.
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an endpoint)"
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def describe_model(executor: Executor, agent: Agent) -> str | None:
    """A line saying which model the run uses, and that a scripted replay calls no model.

    ``None`` when the model cannot be resolved; the run then ends with the registry's error.
    """
    from executus_core.providers.scripted import ScriptedModel

    model_id = agent.model_id
    resolved_id = model_id
    if isinstance(agent.model, str):
        try:
            resolved_id = executor.models.resolve_id(agent.model)
            model = executor.models.resolve(agent.model)
        except Exception:
            return None
    else:
        model = agent.model
    via = f" (tier {model_id!r})" if resolved_id != model_id else ""
    if isinstance(model, ScriptedModel) or resolved_id.startswith("scripted:"):
        return f"model: {resolved_id}{via} — {SCRIPTED_NOTE}"
    where = ""
    endpoint = getattr(model, "endpoint", None)
    for owner, attribute in (
        (model, "base_url"),
        (model, "url"),
        (endpoint, "display_url"),
        (model, "endpoint"),
    ):
        value = getattr(owner, attribute, None)
        if isinstance(value, str) and value:
            where = f" at {_public_url(value)}"
            break
    return f"model: {resolved_id}{via}{where}"


def describe_port(obj: object) -> str:
    """Where a port object keeps its data, in a few words (``sqlite:///...``, ``embedded sqlite``); may be "".

    A battery says it with a ``describe()`` method (or a ``description`` string) on its port
    object, as executus-budget-redis does; ``describe_database()``, ``database`` and ``url`` are read
    too.
    Credentials in a URL are never shown.
    """
    for attribute in ("describe", "description", "describe_database", "database", "url"):
        try:
            value: Any = getattr(obj, attribute, None)
            if callable(value):
                value = value()
        except Exception:  # a description is a courtesy: never let it stop the run
            continue
        if isinstance(value, str) and value.strip():
            text = " ".join(value.split())
            return _public_url(text) if attribute == "url" and "://" in text else text
    return ""


def describe_batteries(executor: Executor) -> str:
    """Which installed batteries take part in runs, on what, and which are left out and why.

    ::

        batteries: audit_sql (audit on sqlite:///home/me/.local/share/executus/audit.db), critic (critic)
        left out: checkpoint_sql (checkpoint: not configured, its hook returned nothing), budget_redis
        (disabled: disable = ["budget_redis"])

    The core's own plugins are not listed. Empty when no battery is installed.
    """
    from executus_core.plugins import PORT_HOOKS

    core = {r.name for r in executor.plugins if r.distribution == "executus-core"}
    port_names = set(PORT_HOOKS.values()) - {"commands", "models", "tools"}
    engaged: dict[str, list[str]] = {}
    filled: dict[str, set[str]] = {}
    for field, port in _PORTS.items():
        value = getattr(executor.ports, field)
        pairs = value if isinstance(value, list) else [value] if value is not None else []
        for name, obj in pairs:
            filled.setdefault(name, set()).add(port)
            if name in core:
                continue
            where = describe_port(obj)
            engaged.setdefault(name, []).append(f"{port} on {where}" if where else port)
    left: list[str] = []
    for record in executor.plugins:
        if record.name in core:
            continue
        if record.status == "disabled":
            left.append(f"{record.name} (disabled by the disable setting or EXECUTUS_DISABLE)")
        elif record.status == "broken":
            left.append(f"{record.name} (broken: {record.error})")
        else:
            for port in record.ports:
                if port not in port_names or port in filled.get(record.name, set()):
                    continue
                single = _FIRST_RESULT.get(port)
                taken = getattr(executor.ports, single) if single else None
                if taken is not None:
                    why = f"{port}: {taken[0]} serves it, and only one {port} is used"
                else:
                    why = f"{port}: not configured, its hook returned nothing"
                left.append(f"{record.name} ({why})")
    lines = []
    if engaged:
        lines.append("batteries: " + ", ".join(f"{n} ({', '.join(p)})" for n, p in engaged.items()))
    if left:
        lines.append("left out: " + ", ".join(left))
    return "\n".join(lines)
