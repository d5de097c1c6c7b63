"""Settings loading fuzzed with hypothesis: whatever a pyproject.toml, an EXECUTUS_* variable or a
settings mapping holds, `Executor()` either starts or raises `ConfigError` / `PluginError` (the two
errors it documents), and a run with the settings it accepted ends in a `Result`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executus_core import Agent, ConfigError, Executor, PluginError, Result
from executus_core.config import CORE_KEYS, load_settings
from executus_core.testing import ScriptedModel

from .conftest import answer

KEYS = [*sorted(CORE_KEYS), "providers", "audit_sql", "nope", "models", "disable"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
tables = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), values, max_size=4)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def starts_or_says_why(**kwargs: Any) -> Executor | None:
    try:
        return Executor(entry_points=False, **kwargs)
    except (ConfigError, PluginError) as exc:
        assert str(exc)  # says what went wrong
        return None


@FUZZ
@given(tables)
def test_any_settings_mapping(table: dict[str, Any]) -> None:
    executor = starts_or_says_why(settings=table, project_dir=tempfile.gettempdir())
    if executor is not None:
        result = executor.run_sync(Agent(name="a", model=ScriptedModel([answer("ok")])), "go", caller_id="u1")
        executor.close()
        assert isinstance(result, Result)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from([f"EXECUTUS_{k.upper()}" for k in KEYS]), st.text(max_size=30), max_size=3
    )
)
def test_any_environment(environ: dict[str, str]) -> None:
    try:
        load_settings(environ=environ, read_pyproject=False)
    except ConfigError as exc:
        assert str(exc)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: ("[tool.executus]\n" + t).encode()))
def test_any_pyproject_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "pyproject.toml").write_bytes(raw)
        try:
            load_settings(project_dir=folder)
        except ConfigError as exc:
            assert str(exc)


def test_a_pyproject_that_is_not_utf8_is_a_config_error() -> None:
    # found by the fuzzer: it escaped load_settings (and Executor()) as a UnicodeDecodeError
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "pyproject.toml").write_bytes(b"\x80")
        try:
            load_settings(project_dir=folder)
        except ConfigError as exc:
            assert "pyproject.toml" in str(exc)
        else:
            raise AssertionError("no ConfigError")
