"""router: routes a game request by intent to the service that owns it.

Dispatch looks the intent up in the route table (``_table``: the built-in routes and the JSON
shape of a route), turns the payload (a ``google.protobuf.Struct`` in proto3 JSON form) into the
target's request message with ``json_format`` and the generated classes of its ``gaming.*``
package, calls the target over the mesh, and returns the answer as a Struct (proto3 JSON, field
names in lowerCamelCase, 64-bit integers as strings) with the target's status.

Behaviour in detail:
    - The request is built as: the route's ``defaults``, then the payload merged over them, then
      ``player_id`` copied into the route's player field and the locale (``en-US`` when empty)
      into its locale field, each only where the payload left it empty. A payload the message
      cannot hold (unknown field, wrong type) is INVALID_ARGUMENT on ``payload``.
    - The target call's deadline is the route's timeout, or the caller's remaining time when
      that is shorter; the trace context follows on its own. The caller's ``authorization``
      metadata is passed on, so a protected target judges the original caller (checking the
      caller here is the auth interceptor's business, as for every service).
    - The target's answer: OK -> ``response``; an error status -> Dispatch is still OK, with
      ``status_code`` and ``status_message`` (its rich details are not carried). Two statuses
      mean the target was not reached and fail Dispatch itself, naming the target:
      UNAVAILABLE (no server, connection lost, or the target reporting itself unavailable) and
      DEADLINE_EXCEEDED (no answer within the route's timeout, or the target reporting it).
      The payload may set the player field itself and then wins over ``player_id``: which
      player a caller may act for is for an interceptor or the target to decide.
    - Unknown intent: NOT_FOUND; a malformed one (not dot-separated lower_snake_case): INVALID_ARGUMENT;
      a disabled route: FAILED_PRECONDITION.

The service keeps no state: the table is built once by ``create()`` from configuration.

Settings (``deps.settings``):
    routes: a JSON object of intent -> route object or null, applied over the built-in table
        (``MESH_ROUTER_ROUTES`` in the host). Keys given for a built-in intent replace its own,
        null removes an intent, a new intent names at least ``target_service`` and ``method``::

            {"kb.search": {"enabled": false},
             "language.translate": {"timeout": "0.5s"},
             "payment.charge": {"target_service": "payment",
                                "method": "gaming.payment.v1.PaymentService/Charge",
                                "player_field": "account_id", "timeout": "3s"},
             "ai.route": null}
"""

from __future__ import annotations

from gaming.router.v1 import router_pb2_grpc

from servicers.dependencies import Dependencies
from servicers.router._servicer import FORWARDED_METADATA, RouterServicer
from servicers.router._table import BUILT_IN, Route, table

__all__ = ["BUILT_IN", "FORWARDED_METADATA", "SERVICE_NAMES", "TARGET", "Route", "RouterServicer",
           "add_to_server", "create"]

TARGET = "router"
SERVICE_NAMES = ("gaming.router.v1.RouterService",)
add_to_server = router_pb2_grpc.add_RouterServiceServicer_to_server


async def create(deps: Dependencies) -> RouterServicer:
    """A router with the built-in routes and the ``routes`` setting (it opens no bucket).

    Raises:
        ValueError: the ``routes`` setting is malformed or names a method that does not exist
            (fail at start-up, not at the first call).
    """
    return RouterServicer(table(deps.settings.get("routes")), channel=deps.channel)
