"""RouterService: looks an intent up, builds the target's request, calls it, reports its answer."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from gaming.router.v1 import router_pb2 as pb
from gaming.router.v1 import router_pb2_grpc
from google.protobuf import duration_pb2, json_format, message, struct_pb2

from servicers.errors import failed_precondition, invalid_argument, not_found, rpc_error
from servicers.router._table import INTENT, Route

_log = logging.getLogger(__name__)

DEFAULT_LOCALE = "en-US"
MAX_PLAYER_ID = 128
MAX_INTENT = 128
# BCP 47 in outline: a 2-3 letter language, then subtags of 1-8 letters or digits.
LOCALE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
MAX_LOCALE = 35
# Call metadata passed on to the target, so a protected target authenticates the original caller.
FORWARDED_METADATA = ("authorization",)
# grpcio's time_remaining() when a call has no deadline is ~9.2e18: none.
_NO_DEADLINE = 1e9
# The target's own status travels in the response, except these: they say the target was not
# reached, or not in time, and the proto gives each its own error of Dispatch.
_NOT_REACHED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _struct(reply: message.Message) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(json_format.MessageToDict(reply))
    return struct


def _fill(request: message.Message, path: str, value: str) -> None:
    """Set the string (or LocaleTag) at ``path`` to ``value`` unless the payload set it."""
    *parents, last = path.split(".")
    holder = request
    for name in parents:
        holder = getattr(holder, name)
    if holder.DESCRIPTOR.fields_by_name[last].message_type is not None:  # a LocaleTag
        if not holder.HasField(last):
            getattr(holder, last).tag = value
    elif not getattr(holder, last):
        setattr(holder, last, value)


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """Dispatches intents to the owning services through their generated message classes.

    Args:
        routes: the route table by intent (see ``_table``).
        channel: channels to the targets, by target name.
    """

    def __init__(self, routes: Mapping[str, Route], *, channel: Callable[[str], Any]) -> None:
        self._routes = dict(routes)
        self._channel = channel

    def __repr__(self) -> str:
        enabled = sum(route.enabled for route in self._routes.values())
        return f"<RouterServicer routes={len(self._routes)} enabled={enabled}>"

    async def ListRoutes(
        self,
        request: pb.ListRoutesRequest,
        context: grpc.aio.ServicerContext[pb.ListRoutesRequest, pb.ListRoutesResponse],
    ) -> pb.ListRoutesResponse:
        """Every route (of one target, if asked), sorted by intent."""
        return pb.ListRoutesResponse(
            routes=[
                self._routes[intent].message()
                for intent in sorted(self._routes)
                if not request.target_service or self._routes[intent].target_service == request.target_service
            ]
        )

    async def Dispatch(
        self,
        request: pb.DispatchRequest,
        context: grpc.aio.ServicerContext[pb.DispatchRequest, pb.DispatchResponse],
    ) -> pb.DispatchResponse:
        """Call the intent's target; its answer, or its error status, is the response."""
        route = self._route(request)
        target_request = _target_request(route, request)
        remaining: float | None = context.time_remaining()
        timeout = route.timeout_seconds
        if remaining is not None and remaining < _NO_DEADLINE:
            timeout = min(timeout, remaining)
        invocation = dict(context.invocation_metadata() or ())
        metadata = tuple((key, invocation[key]) for key in FORWARDED_METADATA if key in invocation)
        call = self._channel(route.target_service).unary_unary(
            route.path,
            request_serializer=route.request_class.SerializeToString,
            response_deserializer=route.response_class.FromString,
        )
        started = time.monotonic()
        try:
            reply = await call(target_request, timeout=timeout, metadata=metadata or None)
        except grpc.aio.AioRpcError as err:
            latency = _duration(time.monotonic() - started)
            code = err.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                _log.warning("router: %s unavailable for %s: %s", route.target_service, route.intent, err.details())
                raise rpc_error(code, f"{route.target_service} is unavailable ({route.method}): "
                                f"{err.details()}", "TARGET_UNAVAILABLE") from err
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise rpc_error(code, f"{route.target_service} did not answer {route.method} within "
                                f"{timeout:.3g} s", "TARGET_DEADLINE_EXCEEDED") from err
            return pb.DispatchResponse(
                target_service=route.target_service, method=route.method, status_code=code.value[0],
                status_message=err.details() or "", latency=latency,
            )
        return pb.DispatchResponse(
            target_service=route.target_service, method=route.method, response=_struct(reply),
            latency=_duration(time.monotonic() - started),
        )

    def _route(self, request: pb.DispatchRequest) -> Route:
        if not request.intent:
            raise invalid_argument("intent", "is required")
        if len(request.intent) > MAX_INTENT or not INTENT.fullmatch(request.intent):
            raise invalid_argument("intent", "must be dot-separated lower_snake_case words, e.g. quest.generate")
        if not request.player_id:
            raise invalid_argument("player_id", "is required")
        if len(request.player_id) > MAX_PLAYER_ID:
            raise invalid_argument("player_id", f"must be at most {MAX_PLAYER_ID} characters")
        tag = request.locale.tag
        if tag and (len(tag) > MAX_LOCALE or not LOCALE.fullmatch(tag)):
            raise invalid_argument("locale.tag", "must be a BCP 47 language tag such as en-US")
        route = self._routes.get(request.intent)
        if route is None:
            raise not_found(f"no route for intent {request.intent!r}", "ROUTE_NOT_FOUND")
        if not route.enabled:
            raise failed_precondition(f"the route for {request.intent!r} is disabled", "ROUTE_DISABLED")
        return route


def _target_request(route: Route, request: pb.DispatchRequest) -> message.Message:
    """The payload as the target's request message, over the route's defaults, player and locale filled."""
    target_request = route.request_class()
    json_format.ParseDict(dict(route.defaults), target_request)  # checked when the table was built
    try:
        json_format.ParseDict(json_format.MessageToDict(request.payload), target_request)
    except json_format.ParseError as err:
        raise invalid_argument("payload", f"does not fit {target_request.DESCRIPTOR.full_name}: {err}") from err
    if route.player_field is not None:
        _fill(target_request, route.player_field, request.player_id)
    if route.locale_field is not None:
        _fill(target_request, route.locale_field, request.locale.tag or DEFAULT_LOCALE)
    return target_request
