"""Every exception executus defines, in one place.

The tree::

    ExecutusError
    ├── ConfigError            a setting is unknown or has a bad value (names the key and the plugin)
    ├── PluginError            a plugin failed to import, or its hook raised, while an Executor was built
    ├── ModelNotFound          a model id or tier that no provider or setting knows
    ├── BudgetExceeded         raised by a Budget to refuse a run (reason, retry_after, limit)
    ├── RunFailed              raised by Result.raise_for_status() for a run that did not end ok
    ├── RunTakenOver           raised by a Checkpointer when this process no longer owns the run
    └── ProviderError          a model provider failed (provider, endpoint, status code, request id)
        ├── ProviderConnectionError   the server could not be reached, or timed out
        ├── ProviderStatusError       the server answered with an HTTP error status
        │   ├── AuthenticationError   401 / 403: the API key is missing or wrong
        │   └── RateLimited           429: too many requests (retry_after)
        └── ProviderResponseError     the answer was not what the API promises (bad JSON, no choices,
                                      unknown finish reason, a stream cut off)

Beside them, one warning class: ``ExecutusWarning`` (a ``UserWarning``), for a setting that is
accepted but almost surely not what was meant (a name in ``disable`` that no plugin has).

`Executor.run` never raises any of these at its caller: it returns a `Result` whose `error` says
what failed. They are raised by `Executor()` itself (bad settings, broken plugins), by
`Result.raise_for_status()`, and inside ports and providers, where the core catches them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from executus_core.secrets import mask_text

if TYPE_CHECKING:
    from executus_core.types import Result

__all__ = [
    "AuthenticationError",
    "BudgetExceeded",
    "ConfigError",
    "ExecutusError",
    "ExecutusWarning",
    "ModelNotFound",
    "PluginError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderResponseError",
    "ProviderStatusError",
    "RateLimited",
    "RunFailed",
    "RunTakenOver",
]


class ExecutusError(Exception):
    """Base class of every exception executus raises."""


class ConfigError(ExecutusError):
    """A setting is unknown or has a bad value.

    The message names the setting as a user writes it (``[tool.executus.audit_sql] url``), the
    plugin that owns it, and what was wrong. Secrets in it are masked (`executus_core.secrets`):
    a URL's password, an ``api_key=...`` value.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(mask_text(str(message)), *args)


class PluginError(ExecutusError):
    """A plugin could not be loaded, or one of its hooks raised while an ``Executor`` was built.

    The message is masked like `ConfigError`'s: it never holds a URL password or a key's value.

    Attributes:
        plugin: the plugin's name (its entry-point name, or the name it was registered under).
        distribution: the installed distribution that provides it, when known.
    """

    def __init__(self, message: str, *, plugin: str, distribution: str | None = None) -> None:
        super().__init__(mask_text(message))
        self.plugin = plugin
        self.distribution = distribution


class ModelNotFound(ExecutusError):
    """A model id or tier name that no provider or setting knows; the message lists what is known."""


class BudgetExceeded(ExecutusError):
    """Raised by a `Budget.check` to refuse a run.

    Args:
        reason: what limit was hit, for a person ("daily token limit of 100000 reached").
        retry_after: seconds until the caller may try again, where the budget knows it.
        limit: the setting that refused the run, for programs (``"max_tokens"``,
            ``'callers."vip-*".max_runs'``), where the budget can name one.
    """

    def __init__(self, reason: str, *, retry_after: float | None = None, limit: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.limit = limit


class RunFailed(ExecutusError):
    """Raised by `Result.raise_for_status()` when a run did not end with status ``ok``."""

    def __init__(self, result: Result) -> None:
        super().__init__(f"run {result.run_id} ended {result.status.value}: {result.error or 'no error'}")
        self.result = result


class RunTakenOver(ExecutusError):
    """Raised by any `Checkpointer` method when this process no longer owns the run.

    Another worker took the run over (its lease lapsed while this one was paused, say). The loop
    ends the run ``interrupted`` at once: no further model call, tool, delivery or write, so the
    run has one owner and one output.

    Attributes:
        run_id: the run that was taken over.
        owner: the owner that holds it now, when the store knows.
    """

    def __init__(self, message: str, *, run_id: str = "", owner: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.owner = owner


class ProviderError(ExecutusError):
    """A model provider failed.

    Attributes:
        provider: the provider prefix (``openai``, ``anthropic``, ...).
        endpoint: the endpoint's base URL (never with credentials).
        status_code: the HTTP status, when the server answered.
        request_id: the provider's request id, when it sent one (quote it to their support).
        provider_message: the provider's own error message, when it sent one.
        retryable: whether trying again may succeed.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        endpoint: str = "",
        status_code: int | None = None,
        request_id: str | None = None,
        provider_message: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.endpoint = endpoint
        self.status_code = status_code
        self.request_id = request_id
        self.provider_message = provider_message
        self.retry_after = retry_after
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        parts = [super().__str__()]
        where = ", ".join(
            f"{k} {v}"
            for k, v in (
                ("provider", self.provider),
                ("endpoint", self.endpoint),
                ("status", self.status_code),
                ("request id", self.request_id),
            )
            if v
        )
        if where:
            parts.append(f"({where})")
        text = " ".join(parts)
        if self.provider_message and self.provider_message not in parts[0]:
            text += f": {self.provider_message}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The error's fields, for run events and audit payloads (never holds a secret)."""
        return {
            "type": type(self).__name__,
            "message": super().__str__(),
            "provider": self.provider,
            "endpoint": self.endpoint,
            "status_code": self.status_code,
            "request_id": self.request_id,
            "provider_message": self.provider_message,
        }


class ProviderConnectionError(ProviderError):
    """The provider could not be reached, or did not answer in time."""

    retryable = True


class ProviderStatusError(ProviderError):
    """The provider answered with an HTTP error status."""


class AuthenticationError(ProviderStatusError):
    """401 or 403: the API key is missing, wrong, or lacks access to the model."""


class RateLimited(ProviderStatusError):
    """429: the provider asks us to slow down; ``retry_after`` holds its wait, in seconds."""

    retryable = True


class ProviderResponseError(ProviderError):
    """The provider's answer broke the API's promise: bad JSON, no choices, a cut stream, ..."""


class ExecutusWarning(UserWarning):
    """A setting executus accepts but that is almost surely a mistake; the message says what to fix.

    Emitted with `warnings.warn` (and logged on ``executus.*``): a name in ``disable`` that no
    plugin has (``budget-redis`` for ``budget_redis``), the same plugin object passed twice.
    """
