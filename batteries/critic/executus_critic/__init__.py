"""executus-critic: watches long agent runs.

- **Soft timeout**: once a run passes it (``steer_after``), the model is asked to wrap up.
- **Hard deadline**: the core's ``hard_timeout``, or the critic's own (``hard_factor`` x the soft
  timeout, or ``hard_timeout``), which a run still making progress may pass by ``max_extension``.
- **Hangs**: nothing started or finished for ``hang_timeout`` ends the run as ``timeout`` at once.
- **Loops**: the same tool call ``loop_threshold`` times in a row, or ``stall_steps`` steps without
  a new tool call, get one warning; looping on after it ends the run as ``timeout``.

Install it and every `Executor` uses it; settings go in ``[tool.executus.critic]``
(`CriticSettings`). In code::

    from executus_critic import CriticSettings, RunCritic

    critic = RunCritic(CriticSettings(hard_factor=4, hang_timeout=60))
"""

from typing import TYPE_CHECKING

from executus_core.lazy import lazy_exports

if TYPE_CHECKING:
    from executus_critic.critic import RunCritic
    from executus_critic.decisions import Decision, DecisionKind
    from executus_critic.handle import RunCriticHandle
    from executus_critic.policy import Policy
    from executus_critic.settings import CriticMessages, CriticSettings

# The public names are imported on first use (PEP 562): loading the plugin imports this package
# first, and a command that never touches the battery's port should not pay for its dependencies.
_LAZY = {
    "RunCritic": "executus_critic.critic",
    "Decision": "executus_critic.decisions",
    "DecisionKind": "executus_critic.decisions",
    "RunCriticHandle": "executus_critic.handle",
    "Policy": "executus_critic.policy",
    "CriticMessages": "executus_critic.settings",
    "CriticSettings": "executus_critic.settings",
}


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)


__version__ = "0.1.0"

__all__ = [
    "CriticMessages",
    "CriticSettings",
    "Decision",
    "DecisionKind",
    "Policy",
    "RunCritic",
    "RunCriticHandle",
]
