"""The edge's Envoy resources, as data: what build() makes of an EdgeSpec and our descriptors."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from gateway.envoy_config import ALWAYS_ROUTED, CLUSTER_NAME, ROUTE_NAME, EdgeSpec, Resources, build
from gateway.http_rules import http_services, load_descriptor_set, transcoder_descriptor_set

SETTINGS = "gaming.settings.v1.SettingsService"
DESCRIPTORS = load_descriptor_set()


def spec(**fields: Any) -> EdgeSpec:
    return EdgeSpec(upstream_host="10.0.0.7", upstream_port=50051, **fields)


def manager(resources: Resources) -> Any:
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def transcoder(resources: Resources) -> Any:
    for http_filter in manager(resources).http_filters:
        if http_filter.name == "envoy.filters.http.grpc_json_transcoder":
            config = transcoder_pb2.GrpcJsonTranscoder()
            http_filter.typed_config.Unpack(config)
            return config
    return None


def test_every_annotated_gaming_service_is_found_with_its_server_streaming_methods() -> None:
    found = {service.name: service.server_streaming for service in http_services(DESCRIPTORS)}
    assert len(found) == 22
    assert found[SETTINGS] == ("Watch",)
    assert found["gaming.event_bus.v1.EventBusService"] == ("Subscribe",)


def test_the_transcoder_descriptors_build_in_order_and_hold_the_error_detail_types() -> None:
    merged = descriptor_pb2.FileDescriptorSet.FromString(transcoder_descriptor_set(DESCRIPTORS))
    pool = descriptor_pool.DescriptorPool()
    for file in merged.file:  # as Envoy does: each file's imports must already be in
        pool.Add(file)
    for name in ("google.rpc.Status", "google.rpc.BadRequest", "google.rpc.ErrorInfo",
                 "gaming.settings.v1.RevisionConflict"):
        assert pool.FindMessageTypeByName(name).full_name == name
    assert len({file.name for file in merged.file}) == len(merged.file)


def test_routes_send_each_service_to_the_ingress_and_everything_else_to_a_404() -> None:
    resources = build(spec(services=(SETTINGS, "custom.v1.PlainService")), DESCRIPTORS)
    table = resources.routes[0]
    assert table.name == ROUTE_NAME
    routes = table.virtual_hosts[0].routes
    assert [route.match.prefix for route in routes] == [
        *(f"/{name}/" for name in sorted({SETTINGS, "custom.v1.PlainService", *ALWAYS_ROUTED})), "/",
    ]
    for route in routes[:-1]:
        assert route.route.cluster == CLUSTER_NAME
        assert route.route.timeout.ToSeconds() == 0  # streams are not cut off
    assert routes[-1].direct_response.status == 404


def test_only_routed_services_with_http_rules_are_transcoded() -> None:
    resources = build(spec(services=(SETTINGS, "custom.v1.PlainService")), DESCRIPTORS)
    config = transcoder(resources)
    assert list(config.services) == [SETTINGS]
    assert (config.convert_grpc_status, config.auto_mapping) == (True, False)
    assert config.print_options.stream_sse_style_delimited
    everything = transcoder(build(spec(), DESCRIPTORS))
    assert list(everything.services) == [service.name for service in http_services(DESCRIPTORS)]
    assert transcoder(build(spec(services=()), DESCRIPTORS)) is None


def test_filters_run_cors_then_grpc_web_then_header_stripping_then_transcoding() -> None:
    names = [http_filter.name for http_filter in manager(build(spec(), DESCRIPTORS)).http_filters]
    assert names == [
        "envoy.filters.http.cors", "envoy.filters.http.grpc_web", "envoy.filters.http.lua",
        "envoy.filters.http.grpc_json_transcoder", "envoy.filters.http.router",
    ]


def test_the_ingress_cluster_speaks_http2_to_the_endpoint_of_the_spec() -> None:
    resources = build(spec(), DESCRIPTORS)
    options = http_protocol_options_pb2.HttpProtocolOptions()
    resources.clusters[0].typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    address = resources.endpoints[0].endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (resources.endpoints[0].cluster_name, address.address, address.port_value) == (
        CLUSTER_NAME, "10.0.0.7", 50051)


def test_the_listener_owns_its_port() -> None:
    listener = build(spec(http_host="127.0.0.1", http_port=8000), DESCRIPTORS).listeners[0]
    assert (listener.address.socket_address.address, listener.address.socket_address.port_value) == ("127.0.0.1", 8000)
    assert listener.enable_reuse_port.value is False


@pytest.mark.parametrize("fields", [{"http_port": 0}, {"upstream_port": 70000}, {"services": ("a/b",)}])
def test_a_bad_spec_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"port|service"):
        EdgeSpec(**{"upstream_host": "h", "upstream_port": 1, **fields})
