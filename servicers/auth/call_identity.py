"""Who the current call comes from, as the access interceptor verified it, and the bearer token
it carried.

Both live in context variables that ``servicers.auth.access.AccessPolicy`` sets at the start of
each call's handler, so they belong to that call alone. Handlers read them with ``caller()``,
``audit_actor()`` and ``acts_for()``; the host reads ``current_authorization()`` to forward the
caller's token to the targets a handler calls.
"""

from __future__ import annotations

import contextvars

from servicers.auth.identity import Identity

# Scopes that act for every player: operators, and targets of the mesh acting on their own behalf.
_ACTS_FOR_ANYONE = ("operator", "service")

_caller: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("servicers.auth.caller", default=None)
_authorization: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "servicers.auth.authorization", default=None
)


def caller() -> Identity | None:
    """The verified identity behind the current call's token; None when the call carried no
    token that verifies (possible only on a public method) or no access policy ran."""
    return _caller.get()


def current_authorization() -> str | None:
    """The raw bearer token of the current call, once verified; None without one."""
    return _authorization.get()


def audit_actor() -> str:
    """The actor an audit record names: the verified caller's subject, or "" when the caller is
    anonymous (a public method called without a token). Never taken from request metadata."""
    identity = _caller.get()
    return identity.subject if identity is not None else ""


def recorded_actor(named: str) -> str:
    """The actor an audit record names when a request also names one: operators and services act
    for others and may name whom they act for; anyone else is recorded as who their token says
    they are, whatever the request claims."""
    if named and acts_for_anyone():
        return named
    return audit_actor()


def acts_for(owner_id: str) -> bool:
    """True if the current caller may act on what ``owner_id`` owns: it is that player, an
    operator or a service. An anonymous caller acts for nobody."""
    identity = _caller.get()
    return identity is not None and (identity.subject == owner_id or acts_for_anyone())


def acts_for_anyone() -> bool:
    """True if the current caller is an operator or a service, who act for every player."""
    identity = _caller.get()
    return identity is not None and identity.holds_any(_ACTS_FOR_ANYONE)


def set_call_identity(identity: Identity | None, token: str | None) -> None:
    """Record the current call's verified identity and token (``AccessPolicy`` only)."""
    _caller.set(identity)
    _authorization.set(token if identity is not None else None)
