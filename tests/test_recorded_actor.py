"""The audit actor comes from the verified token: a player cannot record someone else by naming
them in a request; operators and services, who act for others, may name whom they act for."""

from __future__ import annotations

import contextvars

import pytest

from servicers.auth import recorded_actor
from servicers.auth.call_identity import set_call_identity
from servicers.auth.identity import Identity


def _as(identity: Identity | None, named: str) -> str:
    def record() -> str:
        set_call_identity(identity, "token" if identity else None)
        return recorded_actor(named)

    return contextvars.copy_context().run(record)


def _identity(subject: str, *scopes: str) -> Identity:
    return Identity(subject=subject, session_id="s", scopes=scopes, expire_time=2**40)


@pytest.mark.parametrize(("identity", "named", "recorded"), [
    (_identity("player-1", "player"), "root-operator", "player-1"),  # a forged claim is ignored
    (_identity("player-1", "player"), "", "player-1"),
    (_identity("op-7", "operator"), "player-1", "player-1"),  # an operator acting for a player
    (_identity("service:quest-system", "service"), "player-9", "player-9"),
    (_identity("service:quest-system", "service"), "", "service:quest-system"),
    (None, "root-operator", ""),  # anonymous (a public method): no actor, whatever is claimed
])
def test_the_recorded_actor_is_the_verified_caller_unless_it_acts_for_others(identity, named, recorded):
    assert _as(identity, named) == recorded
