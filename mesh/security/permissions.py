"""NATS permissions per identity, derived as pure data from the catalogue.

An identity is a catalogue target (a service) or one of the clients at the edge of the mesh
(``ingress``, ``edge``, ``operator``). Each gets its own inbox prefix ``_INBOX_<name>`` and may
touch nothing else of anyone's: a target T

- serves ``grpc.T.>`` only in queue group T (it can neither join another target's group nor
  read its calls without one), hears cancels of its own calls on ``grpc.$cancel.T`` (and no other
  target's, which would show it their callers' reply subjects), reads its own inbox and answers
  ``$SRV`` discovery;
- calls ``grpc.U.>`` for each U in ``CALLS[T]``, may cancel those calls on ``grpc.$cancel.U``,
  and sends stream traffic to U's per-call subjects ``_INBOX_U.s.>`` (never U's reply subjects,
  which stay out of that subtree);
- replies to the inboxes of its callers and of the edge clients;
- uses the JetStream API for its own buckets and streams only, one API verb at a time.

Replies are granted by inbox prefix instead of ``allow_responses``: a streaming call sends many
messages (keepalive PINGs, chunks, flow control) to one reply subject, and ``allow_responses``
admits one response per request (or ``max``) within ``expires`` only, which would cut long
streams off or, raised high enough for them, leave every inbox writable for that long anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mesh.catalogue import CALLS, CATALOGUE, STORAGE, STREAM_SUBJECTS

__all__ = [
    "AUTH_INTERNAL_METHODS",
    "CLIENTS",
    "Permissions",
    "all_permissions",
    "cancel_subject",
    "client_permissions",
    "identities",
    "inbox_prefix",
    "jetstream_grants",
    "permissions_for",
    "target_permissions",
]

# The clients at the edge: the gRPC ingress, the Envoy control plane, and the `mesh call` /
# `mesh services` operator CLI.
CLIENTS = ("ingress", "edge", "operator")

# Call subjects of auth that only services may publish: a client at the edge must never mint
# service tokens for itself.
AUTH_INTERNAL_METHODS = ("grpc.auth.gaming.auth.v1.AuthService.IssueServiceToken",)

# Read-only account limits: nothing in the services needs it (nats-py does not ask before
# creating a stream); the operator's tools may show it.
_JETSTREAM_ACCOUNT = ("$JS.API.INFO",)

# The JetStream API subjects a KV bucket's stream S needs, for what mesh.jetstream_storage does
# with nats-py 2.16. Each was shown necessary by running the storage without it under a real
# nats-server (a missing grant is a timeout), except the two marked "kept". Not granted, as
# nothing of ours sends them: STREAM.DELETE/PURGE, CONSUMER.DELETE (ephemeral consumers are
# removed by the server once unused), CONSUMER.LIST, $JS.ACK (KV consumers do not ack).
_KV_API = (
    "$JS.API.STREAM.INFO.{s}",  # key_value() looks the bucket up; the storage probe asks it too
    "$JS.API.STREAM.CREATE.{s}",  # ... and creates it on first use
    "$JS.API.STREAM.UPDATE.{s}",  # scales a bucket created with fewer replicas up (mesh.replication)
    "$JS.API.STREAM.MSG.GET.{s}",  # get()
    "$JS.API.DIRECT.GET.{s}.>",  # kept: get() on a bucket created with direct get (nats CLI)
    "$JS.API.CONSUMER.CREATE.{s}",  # watch(): an unnamed ordered consumer
    "$JS.API.CONSUMER.CREATE.{s}.>",  # keys(): a named consumer with a filter
    "$JS.API.CONSUMER.INFO.{s}.>",  # keys() counts what is pending
    "$JS.API.CONSUMER.MSG.NEXT.{s}.>",  # keys() fetches
    "$JS.FC.{s}.>",  # kept: flow control replies of watch()'s ordered consumer under load
)

# The same for a stream of the event log (mesh.jetstream_event_log), every one shown necessary.
_STREAM_API = (
    "$JS.API.STREAM.INFO.{s}",
    "$JS.API.STREAM.CREATE.{s}",
    "$JS.API.STREAM.UPDATE.{s}",  # scaling up, as for buckets
    "$JS.API.CONSUMER.CREATE.{s}.>",  # durable consumers, created and updated by name
    "$JS.API.CONSUMER.INFO.{s}.>",
    "$JS.API.CONSUMER.MSG.NEXT.{s}.>",
    "$JS.ACK.{s}.>",  # settling events
)


@dataclass(frozen=True, slots=True)
class Permissions:
    """What one NATS user may publish and subscribe to.

    ``subscribe`` entries may be ``"<subject> <queue>"``: nats-server's form for "only in this
    queue group".
    """

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()


def inbox_prefix(identity: str) -> str:
    """The inbox prefix of ``identity``'s connections (``nats.connect(inbox_prefix=...)``)."""
    return f"_INBOX_{identity}"


def cancel_subject(target: str) -> str:
    """Where callers cancel unary calls of ``target`` (docs/wire-protocol.md §2 and §5)."""
    return f"grpc.$cancel.{target}"


def identities(catalogue: Iterable[str] = CATALOGUE) -> tuple[str, ...]:
    """Every identity: the catalogue targets, then the edge clients."""
    return (*catalogue, *CLIENTS)


def jetstream_grants(name: str, stream_subjects: Mapping[str, Sequence[str]] = STREAM_SUBJECTS) -> tuple[str, ...]:
    """Publish grants for using the KV bucket or stream ``name`` (a stream iff in ``stream_subjects``)."""
    if name in stream_subjects:
        return (*stream_subjects[name], *(api.format(s=name) for api in _STREAM_API))
    return (f"$KV.{name}.>", *(api.format(s=f"KV_{name}") for api in _KV_API))


def target_permissions(
    target: str,
    *,
    calls: Mapping[str, Sequence[str]] = CALLS,
    storage: Mapping[str, Sequence[str]] = STORAGE,
    stream_subjects: Mapping[str, Sequence[str]] = STREAM_SUBJECTS,
) -> Permissions:
    """The permissions of catalogue target ``target``."""
    callees = calls.get(target, ())
    callers = [c for c, called in calls.items() if target in called]
    publish: list[str] = []
    for callee in callees:
        publish += [f"grpc.{callee}.>", cancel_subject(callee), f"{inbox_prefix(callee)}.s.>"]
    publish += [f"{inbox_prefix(c)}.>" for c in (*callers, *CLIENTS)]
    names = storage.get(target, ())
    for name in names:
        publish += jetstream_grants(name, stream_subjects)
    subscribe = [f"grpc.{target}.> {target}", cancel_subject(target), f"{inbox_prefix(target)}.>", "$SRV.>"]
    # The event log's readers answer settle requests on their stream's control subjects.
    subscribe += [s for n in names for s in stream_subjects.get(n, ()) if s.startswith("_EVLOG.")]
    return Permissions(publish=_unique(publish), subscribe=_unique(subscribe))


def client_permissions(client: str, catalogue: Iterable[str] = CATALOGUE) -> Permissions:
    """The permissions of an edge client.

    All three may call any method of any target except auth's internal ones, cancel their calls
    (``grpc.*.>`` covers every ``grpc.$cancel.T``), send stream traffic to every target's
    per-call subjects, and discover targets through ``$SRV``. ``edge``
    (the Envoy control plane) today needs only ``$SRV`` and its inbox, but it forwards calls
    for routes it discovers, so it gets the ingress set unchanged. ``operator`` may also read
    the account's JetStream limits (``$JS.API.INFO``), and no bucket.
    """
    if client not in CLIENTS:
        raise ValueError(f"unknown client identity {client!r}; known: {', '.join(CLIENTS)}")
    publish = ["grpc.*.>", "$SRV.>", *(f"{inbox_prefix(t)}.s.>" for t in catalogue)]
    if client == "operator":
        publish += _JETSTREAM_ACCOUNT
    return Permissions(
        publish=_unique(publish), subscribe=(f"{inbox_prefix(client)}.>",), publish_deny=AUTH_INTERNAL_METHODS
    )


def permissions_for(identity: str) -> Permissions:
    """The permissions of any identity (target or edge client)."""
    return client_permissions(identity) if identity in CLIENTS else target_permissions(identity)


def all_permissions() -> dict[str, Permissions]:
    """Every identity's permissions, in :func:`identities` order."""
    return {name: permissions_for(name) for name in identities()}


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
