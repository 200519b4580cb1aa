"""Select's filter and ranking, as pure functions of the registered models and the request.

A model qualifies when it has the required capability, is not UNAVAILABLE, has at least the
minimum context, expects no more latency than the budget, and is not excluded. Qualifying models
are ordered by, in turn:

1. preference: models named in ``preferred_models`` first, in the order named;
2. availability: AVAILABLE before DEGRADED;
3. expected latency, fastest first;
4. cost per million tokens, cheapest first (amounts compared as numbers: the registry assumes
   one currency, since it has no exchange rates);
5. name, so equal models always come out in the same order.

The score is the model's position among all qualifying models, scaled to (0, 1]: with ``n``
qualifying, the best scores 1 and each next one ``1/n`` less. It is an ordering, not a measure
of quality, and means nothing across responses (as the proto says).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gaming.model_management.v1 import model_management_pb2 as mm

_AVAILABILITY_ORDER = {mm.AVAILABILITY_AVAILABLE: 0, mm.AVAILABILITY_DEGRADED: 1}


@dataclass(frozen=True, slots=True, kw_only=True)
class Criteria:
    """What a task needs, from a validated SelectRequest.

    Attributes:
        capability: the capability every candidate must have.
        latency_budget_ns: the longest acceptable expected latency, None for no limit.
        min_context_tokens: the smallest acceptable context window (0: any).
        max_candidates: how many candidates to return.
        preferred: model names to rank first, in order.
        excluded: model names to leave out.
    """

    capability: mm.Capability.ValueType
    latency_budget_ns: int | None = None
    min_context_tokens: int = 0
    max_candidates: int = 5
    preferred: tuple[str, ...] = ()
    excluded: frozenset[str] = frozenset()


def qualifies(model: mm.Model, criteria: Criteria) -> bool:
    """Whether ``model`` may serve the task at all."""
    return (
        criteria.capability in model.capabilities
        and model.availability in _AVAILABILITY_ORDER
        and model.context_tokens >= criteria.min_context_tokens
        and (criteria.latency_budget_ns is None or model.expected_latency.ToNanoseconds() <= criteria.latency_budget_ns)
        and model.name not in criteria.excluded
    )


def rank(models: Iterable[mm.Model], criteria: Criteria) -> list[mm.Candidate]:
    """The best ``criteria.max_candidates`` qualifying models, best first (see the module doc)."""
    preference: dict[str, int] = {}
    for index, name in enumerate(criteria.preferred):
        preference.setdefault(name, index)
    unpreferred = len(criteria.preferred)

    def order(model: mm.Model) -> tuple[int, int, int, int, str]:
        return (
            preference.get(model.name, unpreferred),
            _AVAILABILITY_ORDER[model.availability],
            model.expected_latency.ToNanoseconds(),
            model.cost_per_million_tokens.amount_minor,
            model.name,
        )

    ordered = sorted((model for model in models if qualifies(model, criteria)), key=order)
    total = len(ordered)
    return [
        mm.Candidate(model=model, rank=position + 1, score=(total - position) / total,
                     preferred=model.name in preference)
        for position, model in enumerate(ordered[: criteria.max_candidates])
    ]
