"""Settings: explicit arguments, then ``EXECUTUS_*`` environment variables, then ``[tool.executus]``
in the host's ``pyproject.toml``, then defaults.

The core's own keys sit at the top of the table; each plugin owns a sub-table that it validates with
its own pydantic model through `Settings.section`::

    [tool.executus]
    soft_timeout = 60
    disable = ["critic"]

    [tool.executus.models]
    fast = "openai:gpt-4o-mini"

    [tool.executus.audit_sql]
    url = "postgresql+psycopg://127.0.0.1/app"

The same in the environment: ``EXECUTUS_SOFT_TIMEOUT=60``, ``EXECUTUS_DISABLE=critic,audit_sql``,
``EXECUTUS_MODELS__FAST=openai:gpt-4o-mini``, ``EXECUTUS_AUDIT_SQL__URL=...`` (a double underscore
separates the section from the key). In code: ``Executor(settings={"audit_sql": {"url": ...}})``.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from executus_core.errors import ConfigError
from executus_core.secrets import MASK, is_secret_name, mask_text, mask_value

__all__ = ["CoreSettings", "Settings", "default_data_dir", "load_settings"]

M = TypeVar("M", bound=BaseModel)

ENV_PREFIX = "EXECUTUS_"
# Variables under these prefixes belong to test suites and tools, not to settings.
ENV_RESERVED = ("EXECUTUS_TEST_",)


def default_data_dir() -> Path:
    """Where embedded defaults keep their files (the SQL batteries' SQLite database, ...).

    ``EXECUTUS_DATA_DIR`` if set, else ``$XDG_DATA_HOME/executus``, else ``~/.local/share/executus``.
    """
    if env := os.environ.get("EXECUTUS_DATA_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "executus"


class CoreSettings(BaseModel):
    """The core's own settings (the top level of ``[tool.executus]``). Durations are seconds."""

    model_config = ConfigDict(extra="forbid")

    soft_timeout: float = Field(90.0, gt=0, description="Passed to the critic: when a run counts as long.")
    hard_timeout: float = Field(600.0, gt=0, description="A run still going after this ends as timeout.")
    max_steps: int = Field(25, ge=1, description="Model calls per run before it stops with an error.")
    port_timeout: float = Field(10.0, gt=0, description="Longest wait for one call into a port.")
    delivery_timeout: float = Field(
        60.0, gt=0, description="Longest wait for one delivery, retries included."
    )
    deadline_poll: float = Field(0.25, gt=0, description="How often the watcher asks the critic's deadline.")
    max_delegation_depth: int = Field(3, ge=0, description="How deep agent__/skill__ delegation may nest.")
    event_queue_size: int = Field(1024, ge=1, description="Events buffered for a slow on_event consumer.")
    max_tool_calls_per_step: int = Field(
        32, ge=1, description="Tool calls run per model answer; the rest get an error back."
    )
    max_concurrent_tools: int = Field(8, ge=1, description="Tool calls of one run running at once.")
    max_error_chars: int = Field(4000, ge=100, description="Longest Result.error kept; the rest is cut.")
    recovery_concurrency: int = Field(8, ge=1, description="Runs Executor.recover() resumes at once.")
    approval_timeout: float = Field(
        7 * 86400.0, gt=0, description="Longest a paused run waits for approval before resume ends it."
    )
    approval_pauses_step: bool = Field(
        False, description="A call waiting for approval holds its step's other calls too."
    )
    max_history_messages: int = Field(
        500,
        ge=1,
        description="Messages of history (history= or continue_run=) a run keeps; older turns are left out.",
    )
    disable: list[str] = Field(default_factory=list, description="Plugins not to load, by name.")
    skip_broken_plugins: bool = Field(False, description="Start without broken plugins instead of refusing.")
    models: dict[str, str] = Field(default_factory=dict, description="Tier name -> model id.")
    data_dir: Path = Field(
        default_factory=default_data_dir, description="Where embedded defaults keep files."
    )


CORE_KEYS = frozenset(CoreSettings.model_fields)
# Core keys whose value is a table: they are not plugin sections.
CORE_TABLES = frozenset({"models"})


def _find_pyproject(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _read_pyproject(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read settings from {path}: {exc}") from exc
    table = data.get("tool", {}).get("executus", {})
    if not isinstance(table, dict):
        raise ConfigError(f"[tool.executus] in {path} must be a table")
    return table


def _env_value(key: str, raw: str) -> Any:
    if key == "disable":
        return [part.strip() for part in raw.split(",") if part.strip()]
    try:
        return json.loads(raw)  # numbers, booleans, lists and tables
    except ValueError:
        return raw


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_RESERVED) or name == "EXECUTUS_DATA_DIR":
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) == 1:
            table[path[0]] = _env_value(path[0], raw)
        else:
            section = table.setdefault(path[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f"{name}: {path[0]} is set both as a value and as a table")
            section[path[1]] = _env_value(path[1], raw)
    return table


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def _describe(exc: ValidationError, where: str, plugin: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(table)"
        value = err.get("input")
        if isinstance(value, dict):
            shown = ""
        elif any(is_secret_name(part) for part in err["loc"]) and value not in (None, ""):
            shown = f" (got {MASK}: the value of a secret is never shown)"
        else:
            shown = f" (got {mask_text(repr(value))})"
        lines.append(f"{where} {key}: {mask_text(err['msg'])}{shown}")
    return f"bad settings for plugin {plugin!r}:\n  " + "\n  ".join(lines)


class Settings:
    """The merged settings an executor and its plugins read.

    ``settings.core`` holds the core's keys; ``settings.section(name, Model)`` validates a plugin's
    table. ``settings.source`` says where the settings came from (for error messages).
    """

    def __init__(self, table: Mapping[str, Any], *, source: str = "defaults") -> None:
        self.raw: dict[str, Any] = dict(table)
        self.source = source
        core = {k: v for k, v in self.raw.items() if k in CORE_KEYS}
        unknown = [k for k, v in self.raw.items() if k not in CORE_KEYS and not isinstance(v, Mapping)]
        if unknown:
            raise ConfigError(
                f"unknown setting {', '.join(sorted(unknown))} in [tool.executus] ({source}); the core's "
                f"settings are {', '.join(sorted(CORE_KEYS))}, and a plugin's settings go in its own table"
            )
        try:
            self.core = CoreSettings.model_validate(core)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, "[tool.executus]", "executus-core")) from None

    def section(self, name: str, model: type[M], *, plugin: str | None = None) -> M:
        """Validate the ``[tool.executus.<name>]`` table with ``model``; a missing table gives defaults.

        Raises `ConfigError` naming the key and the plugin for an unknown key or a bad value.
        """
        data = self.raw.get(name, {})
        owner = plugin or name
        where = f"[tool.executus.{name}]"
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a table, got {data!r} (plugin {owner!r})")
        unknown = sorted(set(data) - set(model.model_fields))
        if unknown:
            raise ConfigError(
                f"unknown setting {where} {', '.join(unknown)} (plugin {owner!r}); "
                f"known: {', '.join(sorted(model.model_fields)) or 'none'}"
            )
        try:
            return model.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(_describe(exc, where, owner)) from None

    def get(self, name: str, default: Any = None) -> Any:
        """The raw value of a top-level key or table."""
        return self.raw.get(name, default)

    def masked(self) -> dict[str, Any]:
        """The merged table with every secret masked (`executus_core.secrets`): for dumps and logs.

        >>> Settings({"audit_sql": {"url": "postgresql://app:pw@db/prod"}}).masked()
        {'audit_sql': {'url': 'postgresql://app:***@db/prod'}}
        """
        masked = mask_value(self.raw)
        return dict(masked) if isinstance(masked, Mapping) else {}

    def __repr__(self) -> str:
        return f"Settings({self.masked()!r}, source={self.source!r})"


def load_settings(
    explicit: Mapping[str, Any] | None = None,
    *,
    project_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    read_pyproject: bool = True,
) -> Settings:
    """Merge defaults < ``[tool.executus]`` < ``EXECUTUS_*`` < ``explicit`` into `Settings`."""
    table: dict[str, Any] = {}
    sources = []
    if read_pyproject:
        path = _find_pyproject(Path(project_dir or Path.cwd()).resolve())
        if path is not None:
            found = _read_pyproject(path)
            if found:
                table = _merge(table, found)
                sources.append(str(path))
    env = _read_env(os.environ if environ is None else environ)
    if env:
        table = _merge(table, env)
        sources.append("EXECUTUS_* environment")
    if explicit:
        table = _merge(table, explicit)
        sources.append("settings=")
    return Settings(table, source=", ".join(sources) or "defaults")
