"""``executus models``: the model providers, the named endpoints, and what each tier resolves to.

A person asks "which model does ``default`` mean here, and where does it send?": this answers from
the same registry and settings ``executus run`` uses, without calling any model.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from executus_core.cli.header import describe_model
from executus_core.types import Agent

if TYPE_CHECKING:
    from executus_core.executor import Executor

__all__ = ["describe_models"]

# The environment variables the built-in providers read, shown as set or not (never their values).
_KEYS = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
}


def _where(executor: Executor, model_id: str) -> str | None:
    """The endpoint a model id sends to (no request is made), or None when it cannot be built."""
    line = describe_model(executor, Agent(name="models", model=model_id))
    if line is None:
        return None
    _, at, where = line.rpartition(" at ")
    if at:
        return where
    _, dash, note = line.partition(" — ")
    return note if dash else None


def describe_models(executor: Executor) -> dict[str, Any]:
    """The providers, named endpoints and tiers ``executor`` knows, as JSON-able data.

    ``{"providers": [{"prefix", "plugin", "description", "endpoint", "environment"}],
    "endpoints": [{"name", "api", "base_url", "endpoint"}], "tiers": [{"tier", "chain", "model",
    "error"}]}``: ``chain`` is every step from the tier to the model id, ``model`` the id it ends at
    (None, with ``error`` saying what to set, when it does not resolve).
    """
    from executus_core.providers import provider_settings

    registry = executor.models
    providers = []
    for prefix, provider in sorted(registry.providers.items()):
        environment = {name: bool(os.environ.get(name)) for name in _KEYS.get(prefix, ())}
        endpoint = _where(executor, f"{prefix}:probe") if prefix in _KEYS else None
        providers.append(
            {
                "prefix": f"{prefix}:",
                "plugin": provider.plugin,
                "description": provider.description,
                "endpoint": endpoint,
                "environment": environment,
            }
        )
    endpoints = []
    for name, endpoint_settings in sorted(provider_settings(executor.settings).endpoints.items()):
        endpoints.append(
            {
                "name": name,
                "api": endpoint_settings.api,
                "base_url": _where(executor, f"{name}:probe"),
            }
        )
    tiers = []
    names = list(executor.settings.core.models)
    if "default" not in names:
        names.insert(0, "default")
    mapping = executor.settings.core.models
    for tier in names:
        model: str | None = None
        error: str | None = None
        try:
            model = registry.resolve_id(tier)
        except Exception as exc:
            error = str(exc)
        chain = [tier]
        while ":" not in chain[-1] and chain[-1] in mapping and len(chain) <= len(mapping):
            chain.append(mapping[chain[-1]])
        if model is not None and chain[-1] != model:
            chain.append(model)  # the default tier, picked from the API keys that are set
        tiers.append({"tier": tier, "chain": chain, "model": model, "error": error})
    return {"providers": providers, "endpoints": endpoints, "tiers": tiers}
