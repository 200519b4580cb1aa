"""Hypothesis settings profiles of the fuzz suite, chosen with ``HYPOTHESIS_PROFILE``.

``ci`` (the default) keeps the whole directory to a few tens of seconds on a 2-core machine and
is derandomized, so a failure in CI reproduces on every run. ``thorough`` runs many more
examples with fresh randomness each time. Every profile keeps no example database, so a run
leaves no files behind.

Tests that drive a real server cost milliseconds to a second per example, so they take their
budget from an ``-io`` twin of the active profile through :func:`io_settings`.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, Phase, settings

PROFILE_ENV = "HYPOTHESIS_PROFILE"
DEFAULT_PROFILE = "ci"
PROFILES = ("ci", "thorough")

# The I/O tests wait on a real server: generation is never the slow part, and the fixtures that
# hold the server are shared by all examples on purpose.
_IO_HEALTH = (HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much)


def active_profile() -> str:
    """The profile named by the environment, refusing names this suite does not define."""
    name = os.environ.get(PROFILE_ENV, DEFAULT_PROFILE)
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r}: choose one of {', '.join(PROFILES)}")
    return name


def register() -> None:
    """Define the profiles and load the active one (the pure tests use it as it is)."""
    common: dict[str, Any] = {"database": None, "deadline": None, "print_blob": True}
    settings.register_profile("ci", max_examples=150, derandomize=True, **common)
    settings.register_profile("thorough", max_examples=3000, **common)
    io_common: dict[str, Any] = {**common, "suppress_health_check": _IO_HEALTH}
    # Shrinking a run against a server replays it hundreds of times, minutes in all: CI reports
    # the example as found (derandomized, so it reproduces); the thorough profile shrinks.
    no_shrink = tuple(phase for phase in Phase if phase not in (Phase.shrink, Phase.explain))
    settings.register_profile(
        "ci-io", max_examples=30, stateful_step_count=20, derandomize=True, phases=no_shrink, **io_common
    )
    settings.register_profile("thorough-io", max_examples=250, stateful_step_count=40, **io_common)
    settings.load_profile(active_profile())


def io_settings(share: float = 1.0) -> settings:
    """Settings for a test against a real server: the ``-io`` profile, its example budget
    scaled by ``share`` (at least 3 examples)."""
    base = settings.get_profile(f"{active_profile()}-io")
    return settings(base, max_examples=max(3, round(base.max_examples * share)))
