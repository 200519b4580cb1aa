"""The Envoy resources of the HTTP edge, built from an :class:`EdgeSpec` (pure: no I/O).

One listener whose HTTP connection manager runs CORS, gRPC-Web, a Lua filter that strips gRPC
headers from HTTP/JSON answers (and spoofable identity headers from requests), the gRPC-JSON
transcoder and the router; one route table that
sends each known gRPC service (by path prefix ``/pkg.Service/``) to the ingress cluster and
answers everything else 404; one cluster for the gRPC ingress, spoken to over HTTP/2, whose
endpoint comes by EDS so it can move without touching the cluster.

Transcoded requests need no routes of their own: the transcoder rewrites ``GET /v1/...`` to
``POST /pkg.Service/Method`` and clears the route cache, so the service-prefix route carries them
too (and a service that is not routed is not transcoded either: it gets the 404).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.grpc_web.v3 import grpc_web_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, descriptor_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from gateway.http_rules import http_services, transcoder_descriptor_set

__all__ = [
    "CLUSTER_NAME",
    "LISTENER_NAME",
    "ROUTE_NAME",
    "ALWAYS_ROUTED",
    "EdgeSpec",
    "Resources",
    "build",
    "not_found_body",
]

CLUSTER_NAME = "ingress"
LISTENER_NAME = "edge_http"
ROUTE_NAME = "edge_routes"

# The ingress itself answers these for the whole mesh, so they are routed whatever is discovered.
ALWAYS_ROUTED = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

# Headers a browser's gRPC-Web client sends, and the gRPC ones it must be allowed to read.
_CORS_ALLOW_HEADERS = (
    "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout,"
    "x-accept-content-transfer-encoding,x-accept-response-streaming,traceparent,tracestate"
)
_CORS_EXPOSE_HEADERS = "grpc-status,grpc-message,grpc-status-details-bin"
_CORS_METHODS = "GET,POST,PUT,PATCH,DELETE,OPTIONS"

# Request headers an outside client must not be able to set: they steer Envoy's routing and
# retries, or pose as the edge's own bookkeeping. Envoy drops most of them from external
# requests already (use_remote_address); removing them by name does not depend on that.
_UNTRUSTED_REQUEST_HEADERS = (
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-original-path",
    "x-envoy-internal",
    "x-actor-id",  # an identity claim; who calls is the bearer token, which passes through
)

# gRPC's own headers, which an HTTP/JSON or SSE client must not see: its status is the HTTP
# status and the JSON body. Route-level response_headers_to_remove cannot do this: the
# transcoder folds a unary call's trailers into the headers after the router has run, and native
# gRPC answers need these headers. So a small Lua filter, between gRPC-Web and the transcoder,
# strips them from every answer that is not gRPC (gRPC-Web answers are still gRPC there).
# On the way in it drops identity claims an outside client could spoof (x-actor-id and every
# x-mesh-* header, a prefix that route-level header removal cannot name); authorization passes.
_STRIP_GRPC_HEADERS_LUA = """
local names = {"grpc-status", "grpc-message", "grpc-status-details-bin", "grpc-accept-encoding", "grpc-encoding"}

local function strip(headers)
  for _, name in ipairs(names) do
    headers:remove(name)
  end
end

function envoy_on_request(request)
  local spoofed = {}
  for name, _ in pairs(request:headers()) do
    local lower = string.lower(name)
    if lower == "x-actor-id" or string.sub(lower, 1, 7) == "x-mesh-" then
      table.insert(spoofed, name)
    end
  end
  for _, name in ipairs(spoofed) do
    request:headers():remove(name)
  end
end

function envoy_on_response(response)
  local content_type = response:headers():get("content-type") or ""
  if string.sub(content_type, 1, 16) == "application/grpc" then
    return
  end
  strip(response:headers())
  if content_type == "text/event-stream" then
    -- Waits for the end of the stream without buffering the events.
    local trailers = response:trailers()
    if trailers ~= nil then
      strip(trailers)
    end
  end
end
"""

_ZERO = duration_pb2.Duration(seconds=0)
_ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.ApiVersion.V3
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsPair:
    """A certificate chain and its private key, as PEM files Envoy reads."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeSpec:
    """What the edge should look like.

    Attributes:
        upstream_host, upstream_port: the gRPC ingress (any HTTP/2 gRPC server).
        http_host, http_port: where Envoy listens for HTTP/1.1, HTTP/2 (h2c), gRPC and gRPC-Web.
        services: full names of the gRPC services to route (those discovered in the mesh);
            None routes every service that has HTTP rules in the descriptor set.
        cors_origins: origins allowed by CORS; ``"*"`` allows any.
        stream_idle_timeout: seconds a stream may be silent before Envoy resets it (SSE and
            gRPC streams that wait for rare events need longer than Envoy's 5 minutes).
        tls: serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with these PEM files instead of plain HTTP.
        upstream_ca: the ingress serves TLS: verify its certificate against this CA file.
        upstream_server_name: the name the ingress's certificate is checked against.
    """

    upstream_host: str
    upstream_port: int
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    services: tuple[str, ...] | None = None
    cors_origins: tuple[str, ...] = ("*",)
    stream_idle_timeout: int = 3600
    tls: TlsPair | None = None
    upstream_ca: Path | None = None
    upstream_server_name: str = "localhost"

    def __post_init__(self) -> None:
        for port in (self.upstream_port, self.http_port):
            if not 0 < port < 65536:
                raise ValueError(f"port out of range: {port}")
        if self.services is not None and any(not name or "/" in name for name in self.services):
            raise ValueError(f"service names must be full names like pkg.v1.Service: {self.services}")


@dataclass(frozen=True, slots=True)
class Resources:
    """One complete configuration, by xDS resource type (state of the world)."""

    clusters: tuple[Message, ...] = ()
    endpoints: tuple[Message, ...] = ()
    listeners: tuple[Message, ...] = ()
    routes: tuple[Message, ...] = ()


def build(spec: EdgeSpec, descriptors: descriptor_pb2.FileDescriptorSet) -> Resources:
    """The listener, routes, cluster and endpoints for ``spec``.

    Services routed are ``spec.services`` (or every HTTP-annotated one) plus :data:`ALWAYS_ROUTED`;
    those of them with HTTP rules in ``descriptors`` are transcoded.
    """
    annotated = {service.name for service in http_services(descriptors)}
    wanted = sorted(annotated if spec.services is None else set(spec.services))
    routed = sorted(set(wanted) | set(ALWAYS_ROUTED))
    transcoded = tuple(name for name in wanted if name in annotated)
    return Resources(
        clusters=(_cluster(spec),),
        endpoints=(_endpoints(spec.upstream_host, spec.upstream_port),),
        listeners=(_listener(spec, transcoded, descriptors),),
        routes=(_routes(routed, spec.cors_origins),),
    )


def not_found_body() -> str:
    """The JSON body of the catch-all 404: a google.rpc.Status, like the transcoder's errors."""
    return json.dumps({"code": 5, "message": "no route for this path", "details": []}, separators=(",", ":"))


def _any(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _cluster(spec: EdgeSpec) -> Message:
    protocol = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    cluster: Message = cluster_pb2.Cluster(
        name=CLUSTER_NAME,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ADS),
        connect_timeout=duration_pb2.Duration(seconds=2),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(protocol),
        },
    )
    if spec.upstream_ca is not None:
        upstream = tls_pb2.UpstreamTlsContext(
            sni=spec.upstream_server_name,
            common_tls_context=tls_pb2.CommonTlsContext(
                alpn_protocols=["h2"],
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(filename=str(spec.upstream_ca)),
                    match_typed_subject_alt_names=[common_pb2.SubjectAltNameMatcher(
                        san_type=common_pb2.SubjectAltNameMatcher.DNS,
                        matcher=string_pb2.StringMatcher(exact=spec.upstream_server_name),
                    )],
                ),
            ),
        )
        cluster.transport_socket.CopyFrom(base_pb2.TransportSocket(  # type: ignore[attr-defined]
            name="envoy.transport_sockets.tls", typed_config=_any(upstream)))
    return cluster


def _endpoints(host: str, port: int) -> Message:
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))
        )
    )
    assignment: Message = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=CLUSTER_NAME,
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])],
    )
    return assignment


def _transcoder(services: Iterable[str], descriptors: descriptor_pb2.FileDescriptorSet) -> Message:
    transcoder: Message = transcoder_pb2.GrpcJsonTranscoder(
        proto_descriptor_bin=transcoder_descriptor_set(descriptors),
        services=list(services),
        auto_mapping=False,
        convert_grpc_status=True,
        print_options=transcoder_pb2.GrpcJsonTranscoder.PrintOptions(
            always_print_primitive_fields=True,
            stream_sse_style_delimited=True,
        ),
    )
    return transcoder


def _listener(spec: EdgeSpec, transcoded: tuple[str, ...], descriptors: descriptor_pb2.FileDescriptorSet) -> Message:
    filters = [
        hcm_pb2.HttpFilter(name="envoy.filters.http.cors", typed_config=_any(cors_pb2.Cors())),
        hcm_pb2.HttpFilter(name="envoy.filters.http.grpc_web", typed_config=_any(grpc_web_pb2.GrpcWeb())),
    ]
    filters.append(hcm_pb2.HttpFilter(name="envoy.filters.http.lua", typed_config=_any(lua_pb2.Lua(
        default_source_code=base_pb2.DataSource(inline_string=_STRIP_GRPC_HEADERS_LUA),
        clear_route_cache=wrappers_pb2.BoolValue(value=False),
    ))))
    if transcoded:  # nothing to transcode: leave the filter out
        filters.append(hcm_pb2.HttpFilter(
            name="envoy.filters.http.grpc_json_transcoder", typed_config=_any(_transcoder(transcoded, descriptors))
        ))
    filters.append(hcm_pb2.HttpFilter(
        # Clients see neither x-envoy-upstream-service-time nor other x-envoy-* bookkeeping.
        name="envoy.filters.http.router", typed_config=_any(router_pb2.Router(suppress_envoy_headers=True))
    ))
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="edge",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ADS, route_config_name=ROUTE_NAME),
        http_filters=filters,
        # The edge faces the outside: the peer address is the client, nothing it sends is trusted.
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        # No "server: envoy" on our answers (grpc upstreams send no server header of their own).
        server_header_transformation=hcm_pb2.HttpConnectionManager.PASS_THROUGH,
        stream_idle_timeout=duration_pb2.Duration(seconds=spec.stream_idle_timeout),
    )
    listener: Message = listener_pb2.Listener(
        name=LISTENER_NAME,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=spec.http_host, port_value=spec.http_port)
        ),
        # One Envoy owns the port: with reuse_port a second one (a stale test, a second mesh)
        # would silently share it instead of failing.
        enable_reuse_port=wrappers_pb2.BoolValue(value=False),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=_any(manager)
        )])],
    )
    if spec.tls is not None:
        downstream = tls_pb2.DownstreamTlsContext(common_tls_context=tls_pb2.CommonTlsContext(
            alpn_protocols=["h2", "http/1.1"],
            tls_certificates=[common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(filename=str(spec.tls.cert)),
                private_key=base_pb2.DataSource(filename=str(spec.tls.key)),
            )],
        ))
        listener.filter_chains[0].transport_socket.CopyFrom(base_pb2.TransportSocket(  # type: ignore[attr-defined]
            name="envoy.transport_sockets.tls", typed_config=_any(downstream)))
    return listener


def _cors_policy(origins: tuple[str, ...]) -> Message:
    matchers = [
        string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*")) if origin == "*"
        else string_pb2.StringMatcher(exact=origin)
        for origin in origins
    ]
    policy: Message = cors_pb2.CorsPolicy(
        allow_origin_string_match=matchers,
        allow_methods=_CORS_METHODS,
        allow_headers=_CORS_ALLOW_HEADERS,
        expose_headers=_CORS_EXPOSE_HEADERS,
        max_age="86400",
    )
    return policy


def _to_ingress() -> Message:
    action: Message = route_components_pb2.RouteAction(
        cluster=CLUSTER_NAME,
        # Streams last as long as the client wants; a deadline travels as grpc-timeout.
        timeout=_ZERO,
        max_stream_duration=route_components_pb2.RouteAction.MaxStreamDuration(grpc_timeout_header_max=_ZERO),
    )
    return action


def _service_route(service: str) -> Message:
    route: Message = route_components_pb2.Route(
        name=service, match=route_components_pb2.RouteMatch(prefix=f"/{service}/"), route=_to_ingress()
    )
    return route


def _not_found_route() -> Message:
    route: Message = route_components_pb2.Route(
        name="not_found",
        match=route_components_pb2.RouteMatch(prefix="/"),
        direct_response=route_components_pb2.DirectResponseAction(
            status=404, body=base_pb2.DataSource(inline_string=not_found_body())
        ),
        response_headers_to_add=[base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key="content-type", value="application/json"),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )],
    )
    return route


def _routes(services: list[str], cors_origins: tuple[str, ...]) -> Message:
    host = route_components_pb2.VirtualHost(
        name="mesh",
        domains=["*"],
        routes=[*(_service_route(service) for service in services), _not_found_route()],
        typed_per_filter_config={"envoy.filters.http.cors": _any(_cors_policy(cors_origins))},
    )
    table: Message = route_pb2.RouteConfiguration(
        name=ROUTE_NAME,
        virtual_hosts=[host],
        request_headers_to_remove=list(_UNTRUSTED_REQUEST_HEADERS),
    )
    return table
