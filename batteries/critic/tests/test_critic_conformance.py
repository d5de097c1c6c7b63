"""The Critic conformance suite from executus_core.testing, against `RunCritic` in three shapes:
the defaults (the core's hard timeout holds), a critic that owns the deadline, and one tuned so
tight that nudges, extensions and hangs happen while the suite's threads and tasks hammer the
handles."""

from __future__ import annotations

from typing import Any

import pytest
from executus_critic import CriticSettings, RunCritic

from executus_core.testing.conformance import CriticConformance


class TestRunCriticDefaults(CriticConformance):
    @pytest.fixture
    def make_critic(self) -> Any:
        return lambda: RunCritic(CriticSettings())


class TestRunCriticOwnsTheDeadline(CriticConformance):
    @pytest.fixture
    def make_critic(self) -> Any:
        return lambda: RunCritic(CriticSettings(hard_factor=4, max_extension=60, max_runtime=600))


class TestRunCriticOnAHairTrigger(CriticConformance):
    @pytest.fixture
    def make_critic(self) -> Any:
        settings = CriticSettings(
            steer_after="0.001s",
            # well above a scheduling hiccup, so "a fresh run's deadline is in the future" holds
            hard_timeout=0.5,
            max_extension=0.5,
            hang_timeout=0.25,
            loop_threshold=2,
            stall_steps=1,
        )
        return lambda: RunCritic(settings, deadline_poll=0.01)
