"""The gateway pod's Envoy configuration, as ``mesh gateway`` would generate it from the pod's
rendered settings (ports, listen address, TLS files where the prod Secrets are mounted), passes
``envoy --mode validate``: the bootstrap, plus the listener and cluster our control plane pushes,
given to Envoy statically so it checks them too (TLS files included)."""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path

import pytest
from google.protobuf import json_format

from gateway.envoy import EnvoyOptions, bootstrap, find_envoy
from gateway.envoy_config import EdgeSpec, build
from gateway.http_rules import load_descriptor_set
from mesh.cli import build_parser
from mesh.k8s.common import GATEWAY
from tests.k8s._objects import OVERLAYS, overlay
from tests.k8s._pods import Network, pod_of


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_gateway_pods_envoy_configuration_is_valid_for_envoy(tree: Path, name: str, tmp_path: Path) -> None:
    try:
        gateway_command = importlib.import_module("mesh.gateway_command")
    except ModuleNotFoundError:
        pytest.skip("mesh gateway is not in this checkout yet")
    built = overlay(tree, name)
    deployment = built.find("Deployment", GATEWAY)
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    network = Network({(f"nats-{i}.nats", 4222): 4222 for i in range(3)})
    pod = pod_of(deployment, built, f"{GATEWAY}-0", tmp_path / "pod", network, ports)
    args = build_parser().parse_args(pod.argv[3:])  # after "python -m mesh"
    config = gateway_command.resolve(args, pod.env)
    assert config.edge
    assert (config.serve_tls is not None) == (name == "prod")
    spec = EdgeSpec(
        upstream_host=gateway_command.dial_host(config.listen_host), upstream_port=config.grpc_port,
        http_host=config.listen_host, http_port=config.http_port, services=None,
        tls=config.serve_tls, upstream_ca=config.upstream_ca,
    )
    resources = build(spec, load_descriptor_set())
    options = EnvoyOptions()
    document = bootstrap(node_id=options.node_id, xds_host="127.0.0.1", xds_port=18000, admin_host=options.admin_host)
    static = document.setdefault("staticResources", {})
    assert isinstance(static, dict)
    static["clusters"] = [*static.get("clusters", []), *(json_format.MessageToDict(c) for c in resources.clusters)]
    static["listeners"] = [json_format.MessageToDict(listener) for listener in resources.listeners]
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(document))
    result = subprocess.run([str(find_envoy()), "--mode", "validate", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OK" in result.stdout + result.stderr
