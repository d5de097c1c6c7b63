"""Model providers: turn ids like ``openai:gpt-4o-mini`` into `Model` objects.

Providers register a prefix through the ``executus_register_models`` hook (the core's own are
registered below, like any plugin's). `ModelRegistry` resolves an `Agent.model`:

- an object with ``async complete(request)`` is used as it is;
- ``prefix:name`` goes to the provider registered for ``prefix``; a prefix that names an endpoint
  under ``[tool.executus.providers.endpoints]`` goes to the provider of that endpoint's ``api``
  (``local:llama3`` with ``api = "openai"``), whose factory is then called with ``endpoint=prefix``;
- a bare name is a tier from ``[tool.executus.models]``; the tier ``default``, when not mapped,
  picks ``openai:gpt-4o-mini`` if ``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` is set, else
  ``anthropic:claude-sonnet-4-5`` if ``ANTHROPIC_API_KEY`` is set.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from typing import Any

from executus_core.config import Settings
from executus_core.errors import ConfigError, ModelNotFound
from executus_core.hookspecs import hookimpl
from executus_core.ports import Model
from executus_core.providers._http import (
    Endpoint,
    EndpointSettings,
    HttpSettings,
    ProviderSettings,
    named_endpoint,
    provider_settings,
)
from executus_core.providers.anthropic import AnthropicModel, create_anthropic
from executus_core.providers.openai import OpenAIModel, create_openai
from executus_core.providers.scripted import create_scripted

__all__ = [
    "AnthropicModel",
    "Endpoint",
    "EndpointSettings",
    "HttpSettings",
    "ModelFactory",
    "ModelRegistry",
    "OpenAIModel",
    "ProviderSettings",
    "default_model_id",
]

ModelFactory = Callable[[str, Settings], Model]

DEFAULT_OPENAI_MODEL = "openai:gpt-4o-mini"
DEFAULT_ANTHROPIC_MODEL = "anthropic:claude-sonnet-4-5"


def default_model_id(environ: dict[str, str] | None = None) -> str | None:
    """The model the ``default`` tier means when settings do not map it, from the API keys set."""
    env = os.environ if environ is None else environ
    if env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL"):
        return DEFAULT_OPENAI_MODEL
    if env.get("ANTHROPIC_API_KEY"):
        return DEFAULT_ANTHROPIC_MODEL
    return None


@dataclasses.dataclass
class _Provider:
    prefix: str
    factory: ModelFactory
    description: str
    plugin: str | None


class ModelRegistry:
    """The providers one executor knows, and the models it built from them (one per id, reused)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.providers: dict[str, _Provider] = {}
        self._models: dict[str, Model] = {}
        # Check [tool.executus.providers] now, so a typo stops Executor() rather than a later run.
        provider_settings(settings)

    def register(
        self, prefix: str, factory: ModelFactory, description: str = "", *, plugin: str | None = None
    ) -> None:
        """Register ``factory(name, settings) -> Model`` for ids ``prefix:name``."""
        self.providers[prefix] = _Provider(prefix, factory, description, plugin)

    def known(self) -> str:
        """What ids can name, for error messages: the provider prefixes, named endpoints and tiers."""
        tiers = ", ".join(f"{k} -> {v}" for k, v in self.settings.core.models.items()) or "none"
        prefixes = ", ".join(f"{p}:" for p in sorted(self.providers)) or "none"
        try:
            endpoints = provider_settings(self.settings).endpoints
        except ConfigError:
            endpoints = {}
        named = ", ".join(f"{n}: ({e.api})" for n, e in sorted(endpoints.items()) if n not in self.providers)
        return f"providers: {prefixes}; " + (f"endpoints: {named}; " if named else "") + f"tiers: {tiers}"

    def resolve_id(self, model_id: str) -> str:
        """Follow tiers until a ``prefix:name`` id; raises `ModelNotFound`."""
        seen: list[str] = []
        while ":" not in model_id:
            if model_id in seen:
                raise ModelNotFound(f"model tiers loop: {' -> '.join([*seen, model_id])}")
            seen.append(model_id)
            mapped = self.settings.core.models.get(model_id)
            if mapped is None and model_id == "default":
                mapped = default_model_id()
                if mapped is None:
                    raise ModelNotFound(
                        "no model to run: set OPENAI_API_KEY (or OPENAI_BASE_URL for a local "
                        "OpenAI-compatible server) or ANTHROPIC_API_KEY, map a default tier "
                        '([tool.executus.models] default = "openai:gpt-4o-mini"), or pass a model id '
                        "such as --model scripted:examples/assistant.replay.json (offline replay)"
                    )
            if mapped is None:
                raise ModelNotFound(f"unknown model or tier {model_id!r}; {self.known()}")
            model_id = mapped
        return model_id

    def resolve(self, model: Any) -> Model:
        """The `Model` for an `Agent.model` value; raises `ModelNotFound` (or the factory's error)."""
        if not isinstance(model, str):
            if callable(getattr(model, "complete", None)):
                return model
            raise ModelNotFound(f"{model!r} is not a model: pass a model id or an object with complete()")
        model_id = self.resolve_id(model)
        cached = self._models.get(model_id)
        if cached is not None:
            return cached
        prefix, name = model_id.split(":", 1)
        provider = self.providers.get(prefix)
        if provider is not None:
            built = provider.factory(name, self.settings)
        else:
            endpoint = named_endpoint(self.settings, prefix)
            if endpoint is None:
                raise ModelNotFound(
                    f"no provider for {model_id!r} (and no endpoint named {prefix!r}); {self.known()}"
                )
            provider = self.providers.get(endpoint.api)
            if provider is None:
                raise ModelNotFound(
                    f"endpoint {prefix!r} speaks api {endpoint.api!r}, which no provider serves; {self.known()}"
                )
            # A factory serving named endpoints takes the endpoint's name (see the module docstring).
            factory: Callable[..., Model] = provider.factory
            built = factory(name, self.settings, endpoint=prefix)
        self._models[model_id] = built
        return built

    async def aclose(self) -> None:
        """Close every model built so far (their HTTP clients); errors are swallowed."""
        models, self._models = list(self._models.values()), {}
        for model in models:
            close = getattr(model, "aclose", None)
            if close is None:
                continue
            try:
                value = close()
                if inspect.isawaitable(value):
                    await value
            except Exception:
                pass


@hookimpl
def executus_register_models(register: Callable[..., None]) -> None:
    """Register the core's providers: ``openai:``, ``anthropic:`` and ``scripted:``."""
    register("openai", create_openai, "Chat Completions: OpenAI or any compatible server (OPENAI_BASE_URL)")
    register("anthropic", create_anthropic, "Anthropic Messages API (ANTHROPIC_API_KEY)")
    register("scripted", create_scripted, "replays model responses from a JSON file (offline, no API key)")
