"""``k8s/observability/``: the PodMonitors, the alert rules and the Grafana dashboard.

The Prometheus Operator's kinds have no schema in kubernetes-validate, so their structure is
checked here. Every PromQL expression (the rules', the dashboard's panels' and variables') is
parsed by a real PromQL parser, and every metric it names is either one the mesh serves, found
in the ``/metrics`` of a live ``mesh serve``, or from outside the mesh (kube-state-metrics,
cAdvisor, the NATS exporter) and in the allowlist below, which says where each comes from.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import promql_parser
import pytest
import yaml

from mesh.k8s import render
from mesh.k8s.common import NATS, NATS_EXPORTER_IMAGE, NATS_METRICS_PORT, NATS_MONITOR_PORT
from mesh.k8s.emit import document
from mesh.k8s.nats import EXPORTER
from mesh.k8s.observability import DASHBOARD, DASHBOARD_FILE, FOLDER, GRAFANA_LABEL, JOB_LABEL
from mesh.k8s.queries import CALLER_CODES, SERVER_FAULT_CODES
from mesh.k8s.render import HEADER
from mesh.supervisor import http_get
from nats_transport.testing import NatsServer
from tests._waiting import wait_for
from tests.k8s._kustomize import kustomization, load_yaml
from tests.k8s._objects import DEFAULT_CONTAINER, main_container, overlay
from tests.test_host import TARGET, Serve, _call_ok

REPO = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")
READY_WITHIN = 30.0
OURS = ("grpc_server_", "grpc_client_", "nats_transport_")
# Series the rules and the dashboard read from outside the mesh's processes, and where from.
OUTSIDE = {
    # kube-state-metrics v2: a Deployment's available replicas; each container's limits, one
    # series per resource (labels namespace, pod, container, resource, unit).
    "kube_deployment_status_replicas_available": "kube-state-metrics",
    "kube_pod_container_resource_limits": "kube-state-metrics",
    # The kubelet's cAdvisor endpoint (/metrics/cadvisor), per container.
    "container_cpu_usage_seconds_total": "cAdvisor",
    "container_memory_working_set_bytes": "cAdvisor",
    # prometheus-nats-exporter 0.20, the NATS pods' sidecar. -varz turns each number of /varz
    # into gnatsd_varz_<key> (collector/collector.go); -jsz=all reads
    # /jsz?consumers=true&config=true&raft=true and gives jetstream_stream_last_seq per stream
    # replica, labelled stream_name, account, server_name and is_stream_leader (collector/jsz.go).
    "gnatsd_varz_slow_consumers": "prometheus-nats-exporter -varz",
    "jetstream_stream_last_seq": "prometheus-nats-exporter -jsz=all",
}
ALERTS = {
    "MeshTargetErrorRatioHigh", "MeshTargetLatencyHigh", "MeshDeploymentReplicasLow", "MeshContainerCPUHigh",
    "MeshContainerMemoryHigh", "NatsSlowConsumers", "NatsJetStreamReplicaLagging", "MeshCircuitOpen",
    "MeshDroppedMessages",
}
_DURATION = re.compile(r"^[0-9]+[smhdwy]$")
_GRAFANA_INTERVAL = re.compile(r"\$__\w+")
_GRAFANA_VARIABLE = re.compile(r"\$\{\w+(?::\w+)?\}|\$\w+")
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*\w+\)$")


# -- reading the rendered files --------------------------------------------------------------------


def _rules(tree: Path) -> dict[str, Any]:
    (rule,) = load_yaml(tree / FOLDER / "prometheus-rules.yaml")
    return rule


def _alerts(tree: Path) -> list[dict[str, Any]]:
    return [rule for group in _rules(tree)["spec"]["groups"] for rule in group["rules"]]


def _dashboard(tree: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads((tree / FOLDER / DASHBOARD_FILE).read_text())
    return board


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def _as_promql(grafana: str) -> str:
    """A dashboard query as Prometheus receives it: Grafana's intervals and variables filled in."""
    return _GRAFANA_VARIABLE.sub("x", _GRAFANA_INTERVAL.sub("5m", grafana))


def _dashboard_queries(board: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target and of every query variable (``label_values``' series)."""
    queries = [target["expr"] for panel in _panels(board) for target in panel["targets"]]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            found = _LABEL_VALUES.match(variable["query"])
            assert found, variable["query"]
            queries.append(found.group(1))
    return [_as_promql(query) for query in queries]


def _metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (parsing fails the test on a malformed one)."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def _all_metric_names(tree: Path) -> set[str]:
    exprs = [alert["expr"] for alert in _alerts(tree)] + _dashboard_queries(_dashboard(tree))
    return {name for expr in exprs for name in _metric_names(expr)}


def _anchors(markdown: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    headings = [line.lstrip("#").strip() for line in markdown.read_text().splitlines() if re.match(r"^#{1,6} ", line)]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


# -- the rules ---------------------------------------------------------------------------------------


def test_the_rules_are_a_prometheus_rule_of_complete_alerts_that_point_at_their_runbook(tree: Path) -> None:
    rule = _rules(tree)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["name"]
    groups = rule["spec"]["groups"]
    assert len({group["name"] for group in groups}) == len(groups)
    assert all(group["rules"] for group in groups)
    alerts = _alerts(tree)
    assert {alert["alert"] for alert in alerts} == ALERTS
    assert len(alerts) == len(ALERTS)
    anchors = _anchors(REPO / "docs" / "operations.md")
    for alert in alerts:
        assert set(alert) == {"alert", "expr", "for", "labels", "annotations"}, alert["alert"]
        assert _DURATION.match(alert["for"]), alert
        assert alert["labels"]["severity"] in ("critical", "warning"), alert
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, alert["alert"]
        assert annotations["summary"].strip()
        assert annotations["description"].strip()
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md"
        assert anchor in anchors, f"{alert['alert']}: no heading #{anchor} in {page}"
        promql_parser.parse(alert["expr"])


def test_server_fault_and_caller_codes_split_every_grpc_code_but_ok() -> None:
    assert not set(SERVER_FAULT_CODES) & set(CALLER_CODES)
    assert set(SERVER_FAULT_CODES) | set(CALLER_CODES) == {code.name for code in grpc.StatusCode} - {"OK"}


def test_latency_alerts_read_unary_calls_only_and_every_alert_selects_the_mesh_namespace(tree: Path) -> None:
    namespace = kustomization(tree / FOLDER)["namespace"]
    for alert in _alerts(tree):
        selectors: list[Any] = []

        def visit(node: Any, into: list[Any] = selectors) -> bool:
            if isinstance(node, promql_parser.VectorSelector):
                into.append(node)
            return True

        promql_parser.walk(promql_parser.parse(alert["expr"]), visit)
        for selector in selectors:
            found = {(m.name, str(m.op), m.value) for m in selector.matchers.matchers}
            assert ("namespace", "MatchOp.Equal", namespace) in found, (alert["alert"], selector.name)
            if selector.name == "grpc_server_handling_seconds_bucket":
                assert ("grpc_type", "MatchOp.Equal", "unary") in found, alert["alert"]


# -- the monitors --------------------------------------------------------------------------------------


def _selects(selector: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= pod_labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if pod_labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_the_pod_monitors_scrape_every_mesh_pod_and_nats_on_a_port_the_pod_declares(tree: Path, name: str) -> None:
    monitors = load_yaml(tree / FOLDER / "pod-monitors.yaml")
    workloads = [o for o in overlay(tree, name).objects if o["kind"] in ("Deployment", "StatefulSet")]
    scraped: dict[str, str] = {}
    for monitor in monitors:
        assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
        spec = monitor["spec"]
        assert spec["jobLabel"] == JOB_LABEL
        (endpoint,) = spec["podMetricsEndpoints"]
        assert endpoint["path"] == "/metrics"
        for workload in workloads:
            template = workload["spec"]["template"]
            if not _selects(spec["selector"], template["metadata"]["labels"]):
                continue
            assert workload["metadata"]["name"] not in scraped, "scraped twice"
            scraped[workload["metadata"]["name"]] = monitor["metadata"]["name"]
            ports = {port["name"] for c in template["spec"]["containers"] for port in c.get("ports", [])}
            assert endpoint["port"] in ports, (monitor["metadata"]["name"], workload["metadata"]["name"])
            # job is the Deployment's (or StatefulSet's) name: what the rules and dashboard group by.
            assert template["metadata"]["labels"][JOB_LABEL] == workload["metadata"]["name"]
    assert set(scraped) == {w["metadata"]["name"] for w in workloads}
    assert scraped[NATS] == NATS


def test_the_nats_pods_run_the_exporter_beside_the_server_reading_its_monitoring_port(tree: Path) -> None:
    built = overlay(tree, "prod")
    template = built.find("StatefulSet", NATS)["spec"]["template"]
    assert template["metadata"]["annotations"][DEFAULT_CONTAINER] == NATS
    assert main_container(template)["name"] == NATS
    (exporter,) = [c for c in template["spec"]["containers"] if c["name"] == EXPORTER]
    assert exporter["image"] == NATS_EXPORTER_IMAGE
    assert {"-varz", "-jsz=all", "-use_internal_server_name", f"-port={NATS_METRICS_PORT}"} <= set(exporter["args"])
    assert exporter["args"][-1] == f"http://localhost:{NATS_MONITOR_PORT}"
    assert exporter["ports"] == [{"name": "metrics", "containerPort": NATS_METRICS_PORT}]
    context = exporter["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert {"requests", "limits"} <= set(exporter["resources"])
    ingress = built.find("NetworkPolicy", NATS)["spec"]["ingress"]
    open_ports = {port["port"] for rule in ingress if "from" not in rule for port in rule["ports"]}
    assert {NATS_MONITOR_PORT, NATS_METRICS_PORT} <= open_ports


# -- the dashboard -------------------------------------------------------------------------------------


def test_the_dashboard_has_its_variables_and_panels_that_all_query_the_chosen_datasource(tree: Path) -> None:
    board = _dashboard(tree)
    assert board["schemaVersion"] >= 39
    assert board["uid"]
    assert len(board["uid"]) <= 40
    assert HEADER in board["description"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("target", "method"):
        assert variables[name]["multi"], name
        assert variables[name]["includeAll"], name
    source = {"type": "prometheus", "uid": "${datasource}"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in _panels(board):
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs)
        for target in panel["targets"]:
            assert target["datasource"] == source
            assert "$namespace" in target["expr"], (panel["title"], target["expr"])
    cells = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24
        area = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


def test_the_dashboard_shows_what_operators_asked_for(tree: Path) -> None:
    board = _dashboard(tree)
    exprs = [target["expr"] for panel in _panels(board) for target in panel["targets"]]
    used = {name for expr in exprs for name in _metric_names(_as_promql(expr))}
    assert {"grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "nats_transport_in_flight",
            "nats_transport_stream_credit_stalls_total", "nats_transport_reconnects_total",
            "nats_transport_circuit_state", "container_cpu_usage_seconds_total",
            "container_memory_working_set_bytes"} <= used
    # p50, p95 and p99 both per target and per target and method.
    latency = {(found.group(1), found.group(2)) for e in exprs
               if (found := re.match(r"histogram_quantile\(([0-9.]+), sum by \(([^)]*)\)", e))}
    assert {(q, by) for q in ("0.5", "0.95", "0.99") for by in ("job, le", "job, grpc_method, le")} <= latency
    calls = [e for e in exprs if "grpc_server_" in e]
    assert all('job=~"$target"' in e and 'grpc_method=~"$method"' in e for e in calls)


def test_the_dashboard_is_a_configmap_for_grafanas_sidecar_generated_from_the_json_file(tree: Path) -> None:
    spec = kustomization(tree / FOLDER)
    (generator,) = spec["configMapGenerator"]
    assert generator["name"] == DASHBOARD
    assert generator["files"] == [DASHBOARD_FILE]
    assert generator["options"]["disableNameSuffixHash"] is True
    assert GRAFANA_LABEL.items() <= generator["options"]["labels"].items()
    if KUBECTL is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    built = subprocess.run([KUBECTL, "kustomize", str(tree / FOLDER)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    objects = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(built.stdout) if o}
    config_map = objects[("ConfigMap", DASHBOARD)]
    assert config_map["metadata"]["namespace"] == spec["namespace"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"] == {DASHBOARD_FILE: (tree / FOLDER / DASHBOARD_FILE).read_text()}
    assert {kind for kind, _ in objects} == {"ConfigMap", "PodMonitor", "PrometheusRule"}


# -- metric names --------------------------------------------------------------------------------------


def test_every_metric_name_is_the_meshs_or_from_the_allowlist_and_the_allowlist_is_all_used(tree: Path) -> None:
    names = _all_metric_names(tree)
    outside = {name for name in names if not name.startswith(OURS)}
    assert outside == set(OUTSIDE), (outside - set(OUTSIDE), set(OUTSIDE) - outside)


def _scraped_names(exposition: str) -> set[str]:
    """The series names of a Prometheus text exposition, and the families it declares (a labelled
    counter such as the stream credit stalls has a series only once something happened)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.fixture
def serving(private_nats_server: NatsServer) -> Iterator[Serve]:
    serve = Serve(private_nats_server.url, TARGET)
    yield serve
    serve.close()


async def test_every_metric_name_of_ours_is_in_the_scrape_of_a_live_host_and_nats_serves_what_the_exporter_reads(
    tree: Path, serving: Serve, private_nats_server: NatsServer,
) -> None:
    ours = {name for name in _all_metric_names(tree) if name.startswith(OURS)}
    await wait_for(serving.ready, timeout=READY_WITHIN)
    client = await nats.connect(private_nats_server.url)
    try:
        # One call, so every series a call touches has moved at least once.
        assert await _call_ok(client, "observability") in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND)
    finally:
        await client.close()
    status, exposition = await http_get("127.0.0.1", serving.admin_port, "/metrics")
    assert status == 200
    scraped = _scraped_names(exposition)
    assert ours - scraped == set(), f"not served by mesh serve {TARGET}: {sorted(ours - scraped)}"
    histograms = {name.removesuffix("_bucket") for name in ours if name.endswith("_bucket")}
    for histogram in histograms:
        assert {f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"} <= scraped, histogram

    # The pinned nats-server's monitoring data, from which the exporter makes its series: a number
    # slow_consumers in /varz (gnatsd_varz_slow_consumers), and for every stream replica, its
    # last sequence and its cluster's leader in what -jsz=all asks for (jetstream_stream_last_seq,
    # is_stream_leader). The host's buckets are streams.
    port = private_nats_server.monitor_port
    status, varz = await http_get("127.0.0.1", port, "/varz")
    assert status == 200
    assert isinstance(json.loads(varz)["slow_consumers"], int)
    status, jsz = await http_get("127.0.0.1", port, "/jsz?consumers=true&config=true&raft=true")
    assert status == 200
    streams = [s for account in json.loads(jsz)["account_details"] for s in account.get("stream_detail", [])]
    assert streams
    for stream in streams:
        assert isinstance(stream["state"]["last_seq"], int)
        assert isinstance(stream["cluster"]["leader"], str)


# -- the emitter's forms for these files -----------------------------------------------------------------


def test_multi_line_and_double_quoted_strings_read_back_as_written() -> None:
    texts = ['sum(rate(x{a="b"}[5m]))\n/\n  sum(y)', 'up{job="a"} == 0', "it's \"q\"", "a\n\nb", "a\n  b",
             " lead\nx", "trail \nx", "a\nb\n", "tab\tand \"q\"", "\nfirst empty"]
    data = {"values": {f"k{i}": text for i, text in enumerate(texts)}, "items": texts,
            "nested": [{"expr": text} for text in texts]}
    assert yaml.safe_load(document(data)) == data
    rules = (REPO / "k8s" / FOLDER / "prometheus-rules.yaml").read_text()
    assert "expr: |-" in rules
    assert '\\"' not in rules, "an expression JSON-escaped instead of quoted or a block"


def test_the_rendered_observability_files_are_named_in_the_readme() -> None:
    readme = next(f for f in render() if f.path == "README.md").text
    for file in render():
        if file.path.startswith(f"{FOLDER}/"):
            assert f"`{file.path}`" in readme
