"""`Executor`: builds the ports from the installed plugins once, then runs agents.

::

    async with Executor() as executor:
        result = await executor.run(agent, "What is 2 + 2?", caller_id="user-1")
        print(result.status, result.output)

`Executor.run` never raises: every failure comes back as a `Result` with a status and an error.
The one exception is asyncio's own rule: if the *caller's* task is cancelled, the run ends as
``interrupted`` (its checkpoint is kept for `recover`) and ``CancelledError`` propagates, as
asyncio requires. To stop a run and get its `Result`, call `Executor.cancel(run_id)` instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from executus_core.config import Settings, load_settings
from executus_core.loop import AgentRun, EventHandler
from executus_core.palette import InProcessPalette
from executus_core.plugins import PluginRecord, broken_error, build_plugin_manager, call_hook, record_for
from executus_core.ports import Audit, Budget, CheckpointStore, Critic, Delivery, PaletteSource
from executus_core.providers import ModelRegistry
from executus_core.tools import Tool
from executus_core.types import Agent, Interrupted, Result, RunEvent, RunStats, RunStatus, utcnow

__all__ = ["Executor", "Ports"]

log = logging.getLogger("executus")


@dataclasses.dataclass
class Ports:
    """The port objects one executor built, each with the name of the plugin that made it."""

    audits: list[tuple[str, Audit]] = dataclasses.field(default_factory=list)
    budgets: list[tuple[str, Budget]] = dataclasses.field(default_factory=list)
    critic: tuple[str, Critic] | None = None
    checkpoints: tuple[str, CheckpointStore] | None = None
    palettes: list[tuple[str, PaletteSource]] = dataclasses.field(default_factory=list)
    deliveries: list[tuple[str, Delivery]] = dataclasses.field(default_factory=list)

    def objects(self) -> list[object]:
        """Every port object, in no particular order (one object filling two ports appears twice)."""
        found: list[object] = [o for _, o in (*self.audits, *self.budgets, *self.palettes, *self.deliveries)]
        found += [pair[1] for pair in (self.critic, self.checkpoints) if pair is not None]
        return found


# hook -> (the Ports field, the Protocol the returned object must satisfy, firstresult)
_PORT_HOOKS: dict[str, tuple[str, type, bool]] = {
    "executus_audit": ("audits", Audit, False),
    "executus_budget": ("budgets", Budget, False),
    "executus_critic": ("critic", Critic, True),
    "executus_checkpointer": ("checkpoints", CheckpointStore, True),
    "executus_palette": ("palettes", PaletteSource, False),
    "executus_delivery": ("deliveries", Delivery, False),
}


class Executor:
    """Runs agents with the ports the installed plugins provide.

    Args:
        plugins: plugin objects or modules to register beside the installed ones (asked first).
        disable: names of plugins not to load (overrides ``disable`` from the environment and
            pyproject.toml).
        settings: settings as a mapping, the same shape as ``[tool.executus]``; they override
            ``EXECUTUS_*`` variables and pyproject.toml.
        entry_points: load installed plugins (set False in tests that pass ``plugins=`` only).
        project_dir: where to look for pyproject.toml (default: the current directory and up).

    Raises:
        ConfigError: a setting is unknown or has a bad value.
        PluginError: a plugin failed to load or its hook raised (unless ``skip_broken_plugins``).
    """

    def __init__(
        self,
        *,
        plugins: Sequence[object] = (),
        disable: Sequence[str] | None = None,
        settings: Mapping[str, Any] | Settings | None = None,
        entry_points: bool = True,
        project_dir: str | Path | None = None,
    ) -> None:
        if isinstance(settings, Settings):
            self.settings = settings
        else:
            explicit = dict(settings or {})
            if disable is not None:
                explicit["disable"] = list(disable)
            self.settings = load_settings(explicit, project_dir=project_dir)
        core = self.settings.core
        self._runs: dict[str, AgentRun] = {}
        self._agents: dict[str, Agent] = {}
        self._skills: dict[str, Any] = {}
        self._closed = False
        self._runner: asyncio.Runner | None = None
        self.palette = InProcessPalette(self)

        self.plugin_manager, self.plugin_records = build_plugin_manager(
            plugins=plugins,
            disable=core.disable,
            entry_points=entry_points,
            extra_builtins=[("palette", self.palette)],
        )
        skip = core.skip_broken_plugins
        broken = broken_error(self.plugin_records)
        if broken is not None:
            if not skip:
                raise broken
            self._skipped(str(broken))

        self.models = ModelRegistry(self.settings)
        self.tools: dict[str, Tool] = {}
        self.provides: dict[str, list[str]] = {}  # plugin name -> model prefixes and tools it registered
        self.ports = Ports()
        self._call_registration_hooks(skip)
        self._build_ports(skip)

    # -- building ----------------------------------------------------------------------------

    def _skipped(self, message: str) -> None:
        log.warning("%s (skipped: skip_broken_plugins is set)", message)
        warnings.warn(
            f"executus: {message} (skipped: skip_broken_plugins is set)", RuntimeWarning, stacklevel=3
        )

    def _hook(
        self,
        name: str,
        kwargs: dict[str, Any] | Callable[[str], dict[str, Any]],
        skip: bool,
        firstresult: bool = False,
    ) -> list[tuple[str, Any]]:
        return call_hook(
            self.plugin_manager,
            self.plugin_records,
            name,
            kwargs,
            firstresult=firstresult,
            skip_broken=skip,
            on_skip=self._skipped,
        )

    def _call_registration_hooks(self, skip: bool) -> None:
        # Each plugin gets register callbacks of its own, so `provides` says who registered what.
        def models_of(owner: str) -> dict[str, Any]:
            def register(prefix: str, factory: Any, description: str = "") -> None:
                self.models.register(prefix, factory, description, plugin=owner)
                self.provides.setdefault(owner, []).append(f"{prefix}:")

            return {"register": register}

        def tools_of(owner: str) -> dict[str, Any]:
            def register(tool: Tool) -> None:
                if not isinstance(tool, Tool):
                    raise TypeError(
                        f"register() takes a Tool (decorate the function with @tool), got {tool!r}"
                    )
                self.tools[tool.name] = tool
                self.provides.setdefault(owner, []).append(tool.name)

            return {"register": register}

        self._hook("executus_register_models", models_of, skip)
        self._hook("executus_register_tools", tools_of, skip)

    def _build_ports(self, skip: bool) -> None:
        for hook, (field, protocol, firstresult) in _PORT_HOOKS.items():
            for name, obj in self._hook(hook, {"settings": self.settings}, skip, firstresult):
                if not isinstance(obj, protocol):
                    message = (
                        f"plugin {name!r}: {hook} returned {type(obj).__name__}, which is not a "
                        f"{protocol.__name__} (missing methods)"
                    )
                    self._mark_broken(name, message)
                    if not skip:
                        from executus_core.errors import PluginError

                        record = record_for(self.plugin_records, name)
                        raise PluginError(
                            message, plugin=name, distribution=record.distribution if record else None
                        )
                    self._skipped(message)
                    continue
                if firstresult:
                    setattr(self.ports, field, (name, obj))
                else:
                    getattr(self.ports, field).append((name, obj))

    def _mark_broken(self, name: str, message: str) -> None:
        for record in self.plugin_records:
            if record.name == name:
                record.status, record.error = "broken", message

    @property
    def plugins(self) -> list[PluginRecord]:
        """What was loaded: every plugin with its distribution, ports and status."""
        return list(self.plugin_records)

    # -- registering agents and skills (the in-process palette) --------------------------------

    def register_agent(self, agent: Agent) -> Agent:
        """Make ``agent`` callable from other agents' ``subagent_palette`` (``agent__<name>``) and recoverable."""
        self._agents[agent.name] = agent
        return agent

    def register_skill(
        self,
        name: str,
        agent: Agent,
        *,
        inputs: type | dict[str, Any] | None = None,
        prompt: str | None = None,
        description: str = "",
    ) -> None:
        """Make ``agent`` callable as ``skill__<name>`` with typed ``inputs``.

        Args:
            inputs: a pydantic model or a JSON schema of the skill's inputs.
            prompt: a ``str.format`` template filled from the inputs (default: the inputs as JSON).
        """
        self.palette.add_skill(name, agent, inputs=inputs, prompt=prompt, description=description)

    # -- running -----------------------------------------------------------------------------

    async def run(
        self,
        agent: Agent,
        prompt: str,
        *,
        caller_id: str,
        channel_id: str | None = None,
        parent_run_id: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        delivery: Any = None,
        dry_run: bool = False,
        on_event: EventHandler | None = None,
        run_id: str | None = None,
    ) -> Result:
        """Run ``agent`` on ``prompt`` for ``caller_id`` and return its `Result`; never raises.

        Args:
            delivery: a `DeliveryTarget` (or a mapping, or a list of them) to send the result to.
            dry_run: build the first model request and return it in ``Result.request`` without
                calling the model or any port.
            on_event: called with each `RunEvent` (sync or async) from a task of its own: a slow or
                failing consumer never stalls the run.
            run_id: the id to give the run (default: a new uuid4 hex).
        """
        return await AgentRun(
            self,
            agent,
            prompt,
            caller_id=caller_id,
            channel_id=channel_id,
            parent_run_id=parent_run_id,
            inputs=inputs,
            delivery=delivery,
            dry_run=dry_run,
            on_event=on_event,
            run_id=run_id,
        ).execute()

    def run_sync(self, agent: Agent, prompt: str, **kwargs: Any) -> Result:
        """`run` for synchronous hosts; the executor keeps one event loop for all its sync calls."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return Result(
                run_id="",
                status=RunStatus.ERROR,
                error="run_sync() was called from a running event loop: use `await executor.run(...)` there",
                stats=RunStats(status=RunStatus.ERROR),
            )
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(self.run(agent, prompt, **kwargs))

    async def stream(self, agent: Agent, prompt: str, **kwargs: Any) -> AsyncIterator[RunEvent]:
        """Run like `run` and yield its events as they happen; the last event is ``result``.

        Leaving the loop early cancels the run.
        """
        queue: asyncio.Queue[RunEvent] = asyncio.Queue()
        user_handler = kwargs.pop("on_event", None)

        async def on_event(event: RunEvent) -> None:
            queue.put_nowait(event)
            if user_handler is not None:
                value = user_handler(event)
                if inspect.isawaitable(value):
                    await value

        run_id = kwargs.pop("run_id", None) or AgentRun.new_id()
        task = asyncio.ensure_future(self.run(agent, prompt, on_event=on_event, run_id=run_id, **kwargs))
        try:
            while not task.done() or not queue.empty():
                if queue.empty():
                    getter = asyncio.ensure_future(queue.get())
                    await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        continue
                    yield getter.result()
                else:
                    yield queue.get_nowait()
            result = task.result()
            yield RunEvent(result.run_id, "result", {"result": result}, utcnow())
        finally:
            if not task.done():
                self.cancel(run_id)
                await asyncio.gather(task, return_exceptions=True)

    def cancel(self, run_id: str) -> bool:
        """Stop a running run: it ends ``cancelled`` and its checkpoint is cleared. False if not running."""
        return self._stop(run_id, RunStatus.CANCELLED)

    def _stop(self, run_id: str, reason: RunStatus) -> bool:
        run = self._runs.get(run_id)
        if run is None or run.task is None or run.stop_reason is not None or run.phase == "finishing":
            return False
        run.stop_reason = reason
        run.task.cancel()
        return True

    @property
    def running(self) -> list[str]:
        """The ids of the runs going on now."""
        return list(self._runs)

    async def recover(
        self, *, agents: Mapping[str, Agent] | None = None, on_event: EventHandler | None = None
    ) -> list[Result]:
        """Resume every run the checkpoint store reports interrupted, concurrently, and return their results.

        A run resumes from its last checkpoint; a tool call whose result was saved is not run again.
        Its agent comes from ``agents`` (by agent id), else from `register_agent`, else from the spec
        saved with the checkpoint (tools by registered name).
        """
        if self.ports.checkpoints is None:
            return []
        name, store = self.ports.checkpoints
        label = f"checkpoint {name!r}: interrupted"
        timeout = self.settings.core.port_timeout
        found: Any = None
        try:
            async with asyncio.timeout(timeout) as waited:
                found = store.interrupted()
                if inspect.isawaitable(found):
                    found = await found
        except Exception as exc:
            if isinstance(exc, TimeoutError) and waited.expired():
                return [_recover_failed(f"{label} did not answer within {timeout:g}s; nothing was resumed")]
            return [_recover_failed(f"{label} raised {type(exc).__name__}: {exc}; nothing was resumed")]
        if found is None:
            found = []
        if not isinstance(found, list | tuple):
            return [_recover_failed(f"{label} returned {type(found).__name__}, not a list of Interrupted")]
        items: list[Interrupted] = []
        failed: list[Result] = []
        for raw in found:
            try:
                items.append(raw if isinstance(raw, Interrupted) else Interrupted.model_validate(raw))
            except Exception:
                failed.append(_recover_failed(f"{label} listed {type(raw).__name__}, not an Interrupted run"))
        known = {a.id: a for a in self._agents.values()} | dict(agents or {})
        return failed + list(await asyncio.gather(*(self._resume(item, known, on_event) for item in items)))

    async def _resume(
        self, item: Interrupted, known: Mapping[str, Agent], on_event: EventHandler | None
    ) -> Result:
        agent: Any = known.get(item.info.subject_id) or item.agent
        run = AgentRun(
            self,
            agent,
            None,
            caller_id=item.info.caller_id,
            channel_id=item.info.channel_id,
            parent_run_id=item.info.parent_run_id,
            inputs=item.info.inputs,
            on_event=on_event,
            resume=item,
        )
        return await run.execute()

    # -- closing -----------------------------------------------------------------------------

    async def shutdown(self, timeout: float | None = None) -> None:
        """End every running run as ``interrupted`` (checkpoints kept), then close models and ports.

        Waits up to ``timeout`` seconds (default: three port timeouts) for runs to finish closing.
        New runs are refused afterwards. Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        runs = list(self._runs.values())
        for run in runs:
            self._stop(run.run_id, RunStatus.INTERRUPTED)
        if runs:
            wait = timeout if timeout is not None else 3 * self.settings.core.port_timeout
            waiters = [asyncio.ensure_future(r.done.wait()) for r in runs]
            _, pending = await asyncio.wait(waiters, timeout=wait)
            for waiter in pending:
                waiter.cancel()
        try:
            # Bounded like any port call: a model client that hangs on close must not hang shutdown.
            async with asyncio.timeout(self.settings.core.port_timeout):
                await self.models.aclose()
        except TimeoutError:
            log.warning("closing the models did not finish within %gs", self.settings.core.port_timeout)
        # One object may fill several ports (or be registered twice): close it once.
        for obj in {id(o): o for o in self.ports.objects()}.values():
            close = getattr(obj, "aclose", None)
            if close is None:
                continue
            try:
                async with asyncio.timeout(self.settings.core.port_timeout):
                    value = close()
                    if inspect.isawaitable(value):
                        await value
            except Exception as exc:
                log.warning("closing %r failed: %r", obj, exc)

    def close(self) -> None:
        """`shutdown` for synchronous hosts (after `run_sync`)."""
        if self._runner is None:
            self._runner = asyncio.Runner()
        try:
            self._runner.run(self.shutdown())
        finally:
            self._runner.close()
            self._runner = None

    async def __aenter__(self) -> Executor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recover_failed(message: str) -> Result:
    """A `Result` for a run `Executor.recover` could not even read from the store."""
    log.error("recover: %s", message)
    return Result(run_id="", status=RunStatus.ERROR, error=message, stats=RunStats(status=RunStatus.ERROR))
