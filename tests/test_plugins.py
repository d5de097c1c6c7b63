"""Plugins: built-ins register like batteries, hooks are called once, broken plugins are named."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from executus_core import (
    Agent,
    BudgetExceeded,
    Executor,
    PluginError,
    RunStatus,
    hookimpl,
)
from executus_core.errors import ExecutusWarning
from executus_core.plugins import DEFAULT_PLUGINS
from executus_core.testing import MemoryAudit, ScriptedModel

from .conftest import answer


class CountingBudget:
    def __init__(self, name: str, refuse: bool = False) -> None:
        self.name, self.refuse = name, refuse
        self.checked: list[str] = []
        self.committed: list[tuple[str, float]] = []

    async def check(self, caller_id: str) -> None:
        self.checked.append(caller_id)
        if self.refuse:
            raise BudgetExceeded(f"{self.name} says no", retry_after=30)

    async def commit(self, caller_id: str, runtime_seconds: float, usage: object) -> None:
        self.committed.append((caller_id, runtime_seconds))


class BudgetPlugin:
    def __init__(self, budget: CountingBudget) -> None:
        self.budget = budget
        self.executus_name = f"budget-{budget.name}"
        self.calls = 0

    @hookimpl
    def executus_budget(self, settings: object) -> CountingBudget:
        self.calls += 1
        return self.budget


def test_builtins_are_listed_like_any_plugin() -> None:
    ex = Executor(entry_points=False)
    records = {r.name: r for r in ex.plugins}
    for name in [*DEFAULT_PLUGINS, "palette"]:
        assert records[name].status == "enabled"
        assert records[name].distribution == "executus-core"
    assert "models" in records["models"].ports and "delivery" in records["delivery"].ports
    assert "scripted" in ex.models.providers and "run_status" in ex.tools


async def test_every_budget_is_asked_and_charged_and_hooks_run_once() -> None:
    first, second = CountingBudget("a"), CountingBudget("b")
    plugins = [BudgetPlugin(first), BudgetPlugin(second)]
    async with Executor(entry_points=False, plugins=plugins) as ex:
        for _ in range(3):
            result = await ex.run(Agent(name="x", model=ScriptedModel([answer("hi")])), "hi", caller_id="u1")
            assert result.status is RunStatus.OK
    assert [p.calls for p in plugins] == [1, 1]  # at build time only, never per run
    assert first.checked == second.checked == ["u1"] * 3
    assert len(first.committed) == len(second.committed) == 3


async def test_any_refusal_ends_the_run_before_the_model_is_called() -> None:
    model = ScriptedModel([answer("never")])
    plugins = [BudgetPlugin(CountingBudget("a")), BudgetPlugin(CountingBudget("b", refuse=True))]
    async with Executor(entry_points=False, plugins=plugins) as ex:
        result = await ex.run(Agent(name="x", model=model), "hi", caller_id="u1")
    assert result.status is RunStatus.BUDGET_EXCEEDED
    assert "b says no" in (result.error or "") and "retry after 30s" in (result.error or "")
    assert model.requests == []


class CriticPlugin:
    def __init__(self, name: str) -> None:
        self.executus_name = name

    @hookimpl
    def executus_critic(self, settings: object) -> object:
        plugin = self

        class Critic:
            name = plugin.executus_name

            async def monitor(self, info: object, soft_timeout: float) -> None:
                return None

        return Critic()


def test_firstresult_critic_takes_the_last_registered() -> None:
    ex = Executor(entry_points=False, plugins=[CriticPlugin("first"), CriticPlugin("second")])
    assert ex.ports.critic is not None and ex.ports.critic[0] == "second"


class RaisingPlugin:
    executus_name = "raiser"

    @hookimpl
    def executus_audit(self, settings: object) -> object:
        raise RuntimeError("cannot reach the audit database")


def test_a_hook_that_raises_refuses_to_start_naming_the_plugin() -> None:
    with pytest.raises(PluginError) as info:
        Executor(entry_points=False, plugins=[RaisingPlugin()])
    assert info.value.plugin == "raiser"
    assert "cannot reach the audit database" in str(info.value)
    assert "EXECUTUS_DISABLE=raiser" in str(info.value)


def test_skip_broken_plugins_starts_without_it_and_says_so() -> None:
    with pytest.warns(RuntimeWarning, match="raiser"):
        ex = Executor(entry_points=False, plugins=[RaisingPlugin()], settings={"skip_broken_plugins": True})
    assert ex.ports.audits == []
    assert {r.name: r.status for r in ex.plugins}["raiser"] == "broken"


class WrongTypePlugin:
    executus_name = "wrong"

    @hookimpl
    def executus_budget(self, settings: object) -> object:
        return "not a budget"


def test_a_hook_returning_the_wrong_type_is_a_broken_plugin() -> None:
    with pytest.raises(PluginError, match=r"'wrong'.*not a Budget"):
        Executor(entry_points=False, plugins=[WrongTypePlugin()])


def test_disabled_plugin_is_not_loaded() -> None:
    ex = Executor(entry_points=False, plugins=[RaisingPlugin()], disable=["raiser"])
    assert {r.name: r.status for r in ex.plugins}["raiser"] == "disabled"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install fake distributions (a dist-info with entry points) on sys.path for this test."""

    def install(dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        info = tmp_path / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[executus]\n{lines}\n")
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))

    monkeypatch.syspath_prepend(str(tmp_path))
    yield install
    for name in list(sys.modules):
        if name.startswith("demo_"):
            del sys.modules[name]


def test_entry_point_plugins_are_loaded(installed) -> None:
    installed(
        "demo-budget",
        {"demo_budget": "demo_budget_plugin"},
        {
            "demo_budget_plugin": """
            from executus_core import hookimpl

            class Budget:
                async def check(self, caller_id): return None
                async def commit(self, caller_id, runtime_seconds, usage): return None

            @hookimpl
            def executus_budget(settings):
                return Budget()
            """
        },
    )
    ex = Executor()
    record = {r.name: r for r in ex.plugins}["demo_budget"]
    assert (record.status, record.distribution, record.version, record.ports) == (
        "enabled",
        "demo-budget",
        "1.2.3",
        ["budget"],
    )
    # installed batteries (a budget battery among them) are picked up beside it
    assert "demo_budget" in [name for name, _ in ex.ports.budgets]
    assert Executor(entry_points=False).ports.budgets == []


def test_an_entry_point_that_fails_to_import_is_named_with_its_distribution(installed) -> None:
    installed(
        "demo-broken",
        {"demo_broken": "demo_broken_plugin"},
        {"demo_broken_plugin": "import not_a_module_at_all\n"},
    )
    with pytest.raises(PluginError) as info:
        Executor()
    assert info.value.plugin == "demo_broken" and info.value.distribution == "demo-broken"
    assert "No module named 'not_a_module_at_all'" in str(info.value)
    with pytest.warns(RuntimeWarning):
        ex = Executor(settings={"skip_broken_plugins": True})
    assert {r.name: r.status for r in ex.plugins}["demo_broken"] == "broken"


async def test_budgets_that_admitted_a_refused_run_get_it_back() -> None:
    admits, refuses = CountingBudget("a"), CountingBudget("b", refuse=True)
    # pluggy asks the last registered first: `admits` answers before `refuses`
    plugins = [BudgetPlugin(refuses), BudgetPlugin(admits)]
    async with Executor(entry_points=False, plugins=plugins) as ex:
        result = await ex.run(Agent(name="x", model=ScriptedModel([answer("never")])), "hi", caller_id="u1")
    assert result.status is RunStatus.BUDGET_EXCEEDED
    assert admits.checked == ["u1"] and admits.committed == [("u1", 0.0)]
    assert refuses.committed == []


# -- issue 16, case 11: a misspelled hook, an unknown name in disable ------------------------------


class MisspelledPlugin:
    executus_name = "typo"

    @hookimpl
    def executus_checkpoint(self, settings: object) -> object:  # executus_checkpointer
        return object()


def test_a_misspelled_hook_refuses_to_start_naming_plugin_hook_and_the_close_match() -> None:
    with pytest.raises(PluginError) as info:
        Executor(entry_points=False, plugins=[MisspelledPlugin()])
    message = str(info.value)
    assert info.value.plugin == "typo"
    assert "'executus_checkpoint'" in message and "did you mean 'executus_checkpointer'?" in message
    assert "reinstall" not in message, "a host object is not a package"
    with pytest.warns(RuntimeWarning, match="executus_checkpoint"):
        ex = Executor(
            entry_points=False, plugins=[MisspelledPlugin()], settings={"skip_broken_plugins": True}
        )
    record = {r.name: r for r in ex.plugins}["typo"]
    assert record.status == "broken" and record.ports == []
    assert ex.ports.checkpoints is None


def test_a_misspelled_hook_in_an_installed_plugin_names_its_distribution(installed) -> None:
    installed(
        "demo-typo",
        {"demo_typo": "demo_typo_plugin"},
        {
            "demo_typo_plugin": """
            from executus_core import hookimpl

            @hookimpl
            def executus_budgets(settings):
                return None
            """
        },
    )
    with pytest.raises(PluginError) as info:
        Executor()
    assert info.value.plugin == "demo_typo" and info.value.distribution == "demo-typo"
    assert "did you mean 'executus_budget'?" in str(info.value)


class UnmarkedPlugin:
    executus_name = "unmarked"

    def executus_audit(self, settings: object) -> object:  # no @hookimpl: pluggy never calls it
        return object()


def test_a_hook_without_the_marker_is_broken_not_shown_as_a_port() -> None:
    with pytest.raises(PluginError, match=r"executus_audit without the @hookimpl marker"):
        Executor(entry_points=False, plugins=[UnmarkedPlugin()])


def test_an_unknown_name_in_disable_warns_with_the_close_match(
    installed, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed(
        "demo-budget-store",
        {"demo_budget_store": "demo_budget_store_plugin"},
        {"demo_budget_store_plugin": ""},
    )
    # the distribution's spelling, in each of the three places disable is read from
    with pytest.warns(ExecutusWarning, match=r"'demo-budget-store'.*did you mean 'demo_budget_store'\?"):
        Executor(entry_points=False, disable=["demo-budget-store"])
    with pytest.warns(ExecutusWarning, match=r"did you mean 'demo_budget_store'\?"):
        Executor(entry_points=False, settings={"disable": ["executus-demo-budget-store"]})
    monkeypatch.setenv("EXECUTUS_DISABLE", "tool")
    with pytest.warns(ExecutusWarning, match=r"'tool'.*did you mean 'tools'\?"):
        Executor(entry_points=False)


def test_known_names_in_disable_do_not_warn(installed, recwarn: pytest.WarningsRecorder) -> None:
    installed("demo-quiet", {"demo_quiet": "demo_quiet_plugin"}, {"demo_quiet_plugin": ""})
    # an installed plugin's name is known even when entry points are not loaded
    Executor(entry_points=False, disable=["demo_quiet", "tools", "palette"])
    assert not [w for w in recwarn if issubclass(w.category, ExecutusWarning)]


# -- issue 16, case 12: host objects of one class side by side ------------------------------------


class Audit:
    """A host's own audit plugin: no executus_name, so it is named after its class."""

    def __init__(self, sink: list[str]) -> None:
        self.sink = sink

    @hookimpl
    def executus_audit(self, settings: object) -> object:
        return MemoryAudit(name="unused")


async def test_host_objects_of_one_class_register_side_by_side() -> None:
    a, b = MemoryAudit(), MemoryAudit()  # the same default executus_name
    first, second = Audit([]), Audit([])
    async with Executor(entry_points=False, plugins=[a, b, first, second]) as ex:
        names = [r.name for r in ex.plugins if r.origin == "host"]
        assert names == ["memory_audit", "memory_audit#2", "Audit", "Audit#2"]
        assert all(r.status == "enabled" for r in ex.plugins)
        assert len(ex.ports.audits) == 4
        result = await ex.run(Agent(name="x", model=ScriptedModel([answer("hi")])), "hi", caller_id="u")
    assert result.status is RunStatus.OK
    assert a.run(result.run_id).stats is not None and b.run(result.run_id).stats is not None


def test_disable_by_the_shared_name_turns_off_every_such_object() -> None:
    ex = Executor(entry_points=False, plugins=[MemoryAudit(), MemoryAudit()], disable=["memory_audit"])
    assert {r.name: r.status for r in ex.plugins if r.origin == "host"} == {
        "memory_audit": "disabled",
        "memory_audit#2": "disabled",
    }


def test_the_same_object_twice_is_used_once_with_a_warning() -> None:
    audit = MemoryAudit()
    with pytest.warns(ExecutusWarning, match="passed twice"):
        ex = Executor(entry_points=False, plugins=[audit, audit])
    assert [r.name for r in ex.plugins if r.origin == "host"] == ["memory_audit"]


def test_a_broken_host_object_is_never_told_to_reinstall_a_package() -> None:
    class Broken:
        @hookimpl
        def executus_budget(self, settings: object, extra: object) -> object:  # not the hook's arguments
            return None

    with pytest.raises(PluginError) as info:
        Executor(entry_points=False, plugins=[Broken()])
    assert "reinstall" not in str(info.value) and "plugins=" in str(info.value)
