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
import functools
import inspect
import logging
import types
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from executus_core.agent import Agent
from executus_core.approval import Decision
from executus_core.config import Settings, load_settings
from executus_core.events import EventBuffer, EventHandler
from executus_core.guard import Failure, await_me_maybe, guarded
from executus_core.lifecycle import takes_run_id
from executus_core.loop import AgentRun, last_resort_result
from executus_core.palette import InProcessPalette
from executus_core.plugins import PluginRecord, broken_error, build_plugin_manager, call_hook, record_for
from executus_core.ports import Audit, Budget, CheckpointStore, Critic, Delivery, PaletteSource
from executus_core.prepare import RunRequest
from executus_core.providers import ModelRegistry
from executus_core.tools import Tool, ToolSet
from executus_core.types import Interrupted, Message, Result, RunEvent, RunStats, RunStatus, utcnow

__all__ = ["Executor", "HistoryTrimmer", "Ports"]

HistoryTrimmer = Callable[[list[Message], Agent], list[Message] | Awaitable[list[Message]]]
"""``history_trimmer(messages, agent)``: what to keep of a conversation's earlier messages."""

_DECISION: TypeAdapter[Decision] = TypeAdapter(Annotated[Decision, Field(discriminator="kind")])

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
        history_trimmer: ``trimmer(messages, agent) -> messages`` (sync or async), called before a
            run that continues a conversation (``history=`` or ``continue_run=``) with the earlier
            messages (no system message); what it returns is sent instead. It may drop, keep or
            summarize turns. A trimmer that raises, returns something else than a list of messages
            or outlasts the run's ``hard_timeout`` ends the run ``error`` before anything is sent.
            ``max_history_messages`` still applies to what it returns.

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
        history_trimmer: HistoryTrimmer | None = None,
    ) -> None:
        self.history_trimmer = history_trimmer
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
        self._paused: dict[str, tuple[Interrupted, Agent]] = {}  # awaiting approval, when there is no store
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
        self.toolsets: dict[str, ToolSet] = {}  # prefix -> the tool set that resolves "prefix:name"
        self.budget_run_id: dict[str, bool] = {}  # budget plugin -> whether its methods take run_id
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
            def register(tool: Tool | ToolSet) -> None:
                if isinstance(tool, Tool):
                    self.tools[tool.name] = tool
                    self.provides.setdefault(owner, []).append(tool.name)
                elif isinstance(tool, ToolSet) and isinstance(tool.prefix, str) and tool.prefix:
                    self.toolsets[tool.prefix] = tool
                    self.provides.setdefault(owner, []).append(f"{tool.prefix}:*")
                else:
                    raise TypeError(
                        "register() takes a Tool (decorate the function with @tool) or a ToolSet (an "
                        f"object with a `prefix` and `async resolve(name)`), got {tool!r}"
                    )

            return {"register": register, "settings": self.settings}

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
        for name, budget in self.ports.budgets:
            self.budget_run_id[name] = takes_run_id(budget.check) and takes_run_id(budget.commit)

    def _mark_broken(self, name: str, message: str) -> None:
        for record in self.plugin_records:
            if record.name == name:
                record.status, record.error = "broken", message

    @property
    def plugins(self) -> list[PluginRecord]:
        """What was loaded: every plugin with its distribution, ports and status."""
        return list(self.plugin_records)

    # -- registering agents and skills (the in-process palette) --------------------------------

    @property
    def agents(self) -> Mapping[str, Agent]:
        """The agents registered with `register_agent`, by name (read-only)."""
        return types.MappingProxyType(self._agents)

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
        history: Sequence[Message] | None = None,
        conversation_id: str | None = None,
        continue_run: str | None = None,
    ) -> Result:
        """Run ``agent`` on ``prompt`` for ``caller_id`` and return its `Result`; never raises.

        Args:
            delivery: a `DeliveryTarget` (or a mapping, or a list of them) to send the result to.
            dry_run: build the first model request and return it in ``Result.request`` without
                calling the model or any port (but the audit, to read ``continue_run``'s transcript).
            on_event: called with each `RunEvent` (sync or async) from a task of its own: a slow or
                failing consumer never stalls the run.
            run_id: the id to give the run (default: a new uuid4 hex).
            history: the messages of earlier turns to continue from (``previous.messages``): the
                conversation goes on with ``prompt`` as the next user message. At most
                ``max_history_messages`` are kept (the oldest turns are left out, with a warning).
            conversation_id: links the turns of one conversation in the audit trail.
            continue_run: the id of an earlier run to continue: its transcript (read from the audit,
                which keeps each run's messages) is the history, and the run joins its conversation
                (its ``conversation_id``, or its run id when it had none). The earlier run must have
                ended ``ok``, for the same ``caller_id``; otherwise this run ends ``error`` saying
                why, before anything is sent. Not with ``history``.
        """
        return await self._execute(
            RunRequest(
                agent=agent,
                prompt=prompt,
                caller_id=caller_id,
                channel_id=channel_id,
                parent_run_id=parent_run_id,
                inputs=inputs,
                delivery=delivery,
                dry_run=dry_run,
                on_event=on_event,
                run_id=run_id,
                history=history,
                conversation_id=conversation_id,
                continue_run=continue_run,
            )
        )

    async def _execute(self, request: RunRequest) -> Result:
        try:
            run = AgentRun(self, request)
        except BaseException as exc:
            return last_resort_result(request.run_id, f"internal error in executus: {exc!r}")
        return await run.execute()

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

        Events wait for you in a buffer of ``event_queue_size``; past that, streamed text deltas are
        merged and other events dropped (``Result.warnings`` says how many), so a slow reader never
        stalls the run. Leaving the loop early cancels the run, wherever it is.
        """
        buffer = EventBuffer(self.settings.core.event_queue_size)
        user_handler = kwargs.pop("on_event", None)

        async def on_event(event: RunEvent) -> None:
            buffer.put(event)
            if user_handler is not None:
                await await_me_maybe(user_handler(event))

        run_id = kwargs.pop("run_id", None) or uuid.uuid4().hex
        task = asyncio.ensure_future(self.run(agent, prompt, on_event=on_event, run_id=run_id, **kwargs))
        try:
            while not task.done() or len(buffer):
                if not len(buffer):
                    getter = asyncio.ensure_future(buffer.get())
                    await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        continue
                    yield getter.result()
                else:
                    yield buffer.get_nowait()
            result = task.result()
            if buffer.dropped:
                result.warnings.append(
                    f"the stream's reader fell behind: {buffer.dropped} events were dropped (event_queue_size)"
                )
            yield RunEvent(result.run_id, "result", {"result": result}, utcnow())
        finally:
            if not task.done():
                # not admitted yet (still asking the budgets, say): cancel the task itself
                if not self.cancel(run_id):
                    task.cancel()
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
        """Resume every run the checkpoint store reports interrupted and return their results.

        A run resumes from its last checkpoint; a tool call whose result was saved is not run again,
        and one that was in flight is run again flagged (`ToolContext.attempt`), or not at all for a
        tool declared ``on_resume="ask"``. Its agent comes from ``agents`` (by agent id), else from
        `register_agent`, else from the spec saved with the checkpoint (tools by registered name).
        At most ``recovery_concurrency`` runs resume at once; each passes the budgets like a new
        run (a refusal keeps its checkpoint for later); a run this executor is running is skipped.
        """
        if self.ports.checkpoints is None:
            return []
        name, store = self.ports.checkpoints
        label = f"checkpoint {name!r}: interrupted"
        limit = self.settings.core.recovery_concurrency
        # A store that takes a limit is asked for a batch at a time: claims it hands out are not
        # renewed, so claiming everything at once would let the last ones lapse while they wait.
        batched = "limit" in _parameter_names(store.interrupted)
        known = {a.id: a for a in self._agents.values()} | dict(agents or {})
        results: list[Result] = []
        seen: set[str] = set()
        slots = asyncio.Semaphore(limit)

        async def resume(item: Interrupted) -> Result:
            async with slots:
                return await self._resume(item, known, on_event)

        while True:
            ask: Any = functools.partial(store.interrupted, limit=limit) if batched else store.interrupted  # type: ignore[call-arg]
            found = await guarded(label, ask, timeout=self.settings.core.port_timeout)
            if isinstance(found, Failure):
                return [*results, _recover_failed(f"{found}; nothing more was resumed")]
            if found is None:
                found = []
            if not isinstance(found, list | tuple):
                return [
                    *results,
                    _recover_failed(f"{label} returned {type(found).__name__}, not a list of Interrupted"),
                ]
            items: list[Interrupted] = []
            for raw in found:
                try:
                    item = raw if isinstance(raw, Interrupted) else Interrupted.model_validate(raw)
                except Exception:
                    results.append(
                        _recover_failed(f"{label} listed {type(raw).__name__}, not an Interrupted run")
                    )
                    continue
                if item.info.run_id in self._runs:
                    log.warning(
                        "recover: run %s is running in this executor; not resumed twice", item.info.run_id
                    )
                    continue
                if item.info.run_id in seen:
                    # resumed once in this call and given back since: let it go for the next recover()
                    await self._unclaim(item)
                    continue
                seen.add(item.info.run_id)
                items.append(item)
            results += await asyncio.gather(*(resume(item) for item in items))
            if not batched or not items or len(found) < limit:
                return results

    async def _unclaim(self, item: Interrupted) -> None:
        """Give back a run `interrupted()` handed out that this call will not resume."""
        assert self.ports.checkpoints is not None
        name, store = self.ports.checkpoints
        try:
            agent = Agent.model_validate(item.agent)
        except Exception:
            agent = Agent(name=item.info.name, id=item.info.subject_id)
        timeout = self.settings.core.port_timeout
        cp = await guarded(f"checkpoint {name!r}: for_run", store.for_run, item.info, agent, timeout=timeout)
        release = getattr(cp, "release", None)
        if not isinstance(cp, Failure) and callable(release):
            await guarded(f"checkpoint {name!r}: release", release, timeout=timeout)

    async def _resume(
        self,
        item: Interrupted,
        known: Mapping[str, Agent],
        on_event: EventHandler | None,
        decisions: dict[str, Decision] | None = None,
    ) -> Result:
        return await self._execute(
            RunRequest(
                agent=known.get(item.info.subject_id) or item.agent,
                prompt=None,
                caller_id=item.info.caller_id,
                channel_id=item.info.channel_id,
                parent_run_id=item.info.parent_run_id,
                inputs=item.info.inputs,
                on_event=on_event,
                resume=item,
                decisions=decisions,
                conversation_id=item.info.conversation_id,
            )
        )

    async def resume(
        self,
        run_id: str,
        *,
        decisions: Mapping[str, Decision | Mapping[str, Any]] | None = None,
        agents: Mapping[str, Agent] | None = None,
        on_event: EventHandler | None = None,
    ) -> Result:
        """Continue the run ``run_id`` — paused ``awaiting_approval``, or interrupted — and return its
        `Result`; never raises.

        ``decisions`` maps each pending call's id to `Approve`, `Deny` or `Edit` (or their dicts,
        ``{"kind": "deny", "reason": "..."}``). A call still without a decision keeps waiting: the
        run pauses again. The run is read from the checkpoint store (any process that shares it
        can resume it, after a restart too) through its ``load(run_id)``; with no store, from this
        executor's memory. Tool calls already answered are not run again.
        """
        try:
            checked = {str(k): _DECISION.validate_python(v) for k, v in (decisions or {}).items()}
        except Exception as exc:
            return last_resort_result(run_id, f"decisions are not valid: {exc}"[:2000])
        kept = self._paused.pop(run_id, None) if isinstance(run_id, str) else None
        item, agent = kept if kept is not None else (None, None)
        load = getattr(self.ports.checkpoints[1], "load", None) if self.ports.checkpoints else None
        if callable(load):
            # the store is the truth: another process may have resumed the run since it paused here
            assert self.ports.checkpoints is not None
            name = self.ports.checkpoints[0]
            found = await guarded(
                f"checkpoint {name!r}: load", load, run_id, timeout=self.settings.core.port_timeout
            )
            if isinstance(found, Failure):
                return last_resort_result(run_id, str(found))
            try:
                # None: the store has no such run (its row may never have reached the database): the
                # copy this executor kept, if any, is all there is
                item = item if found is None else Interrupted.model_validate(found)
            except Exception:
                return last_resort_result(
                    run_id, f"checkpoint {name!r}: load returned {type(found).__name__}"
                )
        if item is None:
            where = (
                "the checkpoint store"
                if self.ports.checkpoints is not None
                else "this executor (no checkpoint store)"
            )
            return last_resort_result(run_id, f"no paused or interrupted run {run_id!r} in {where}")
        known = {a.id: a for a in self._agents.values()} | dict(agents or {})
        if agent is not None:
            known.setdefault(agent.id, agent)
        return await self._resume(item, known, on_event, checked)

    def _keep_paused(self, item: Interrupted, agent: Agent | None) -> None:
        if agent is None:
            return
        self._paused[item.info.run_id] = (item, agent)

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
        objects = [*self.ports.objects(), *self.toolsets.values()]
        for obj in {id(o): o for o in objects}.values():
            close = getattr(obj, "aclose", None)
            if close is None:
                continue
            closed = await guarded(f"closing {obj!r}", close, timeout=self.settings.core.port_timeout)
            if isinstance(closed, Failure):
                log.warning("%s", closed)

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


def _parameter_names(fn: Any) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _recover_failed(message: str) -> Result:
    """A `Result` for a run `Executor.recover` could not even read from the store."""
    log.error("recover: %s", message)
    return last_resort_result("", message)
