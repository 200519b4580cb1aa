"""The NATS cluster: a 3-node JetStream StatefulSet, its Services, disruption budget, network
policy, and its configuration (open in the base, mTLS with per-identity users in prod)."""

from __future__ import annotations

from typing import Any

from mesh.embedded_nats import PING_INTERVAL, PING_MAX
from mesh.k8s.common import (
    NATS,
    NATS_CLIENT_PORT,
    NATS_CLIENT_SERVICE,
    NATS_CLUSTER_PORT,
    NATS_EXPORTER_IMAGE,
    NATS_IMAGE,
    NATS_METRICS_PORT,
    NATS_MONITOR_PORT,
    NATS_NODES,
    container_security,
    labels,
    nats_hosts,
    pod_security,
    selector,
)
from mesh.k8s.pods import secret_volume

__all__ = [
    "CONFIG_DIR",
    "CONFIG_MAP",
    "DATA_DIR",
    "EXPORTER",
    "EXPORTER_ARGS",
    "PID_FILE",
    "PROBES",
    "SECURITY_DIR",
    "SECURITY_SECRET",
    "config",
    "network_policy",
    "pdb",
    "services",
    "statefulset",
    "statefulset_patch",
]

CONFIG_MAP = "nats-config"
SECURITY_SECRET = "nats-security"
CONFIG_DIR = "/etc/nats/config"
SECURITY_DIR = "/etc/nats/security"
DATA_DIR = "/data"
PID_FILE = "/var/run/nats/nats.pid"
# Lame duck mode: on preStop the server stops accepting clients, then closes its existing ones
# spread over this long, so they reconnect to the other servers a few at a time. A SIGTERM that
# arrives meanwhile does not cut it short (nats-server finishes lame duck mode first).
LAME_DUCK = 30
LAME_DUCK_GRACE = 10
GRACE_PERIOD = 60  # > lame duck + its grace
# Every bucket and stream of the mesh reserves its max_bytes on each of its replicas up front
# (about 6.5 GiB in all with the servicers' defaults, R3 puts all of it on every node), so the
# file store leaves room for that and growth; the volume leaves room for the store.
MAX_FILE_STORE = "16GB"
VOLUME_SIZE = "20Gi"
# The mesh keeps nothing in memory streams; without a limit JetStream would claim 75% of the
# node's memory, not the container's.
MAX_MEMORY_STORE = "256MB"

# Liveness is the lightest check (JetStream is on), so a server that is recovering or without a
# meta leader for a while is not restarted into a loop. Startup and readiness are the full check:
# the server is in the JetStream cluster with every stream and consumer it hosts current. So a
# rolling restart moves on only once the restarted server has caught up, and a server that is
# behind counts against the PodDisruptionBudget (a drain never takes a second replica of an R3
# stream). js-server-only is not enough for either: it answers 200 on a server with no routes.
PROBES = {
    "startupProbe": "/healthz",
    "readinessProbe": "/healthz",
    "livenessProbe": "/healthz?js-enabled-only=true",
}

# The metrics sidecar (prometheus-nats-exporter): /varz gives gnatsd_varz_* (slow consumers
# among them), -jsz=all the jetstream_* series of every stream and consumer this server holds
# a replica of, which the replica-lag alert compares across servers. It names the server by its
# server_name (the pod's name), not by the URL it reads, so the series tell the three apart.
EXPORTER = "metrics"
EXPORTER_ARGS = [
    f"-port={NATS_METRICS_PORT}", "-use_internal_server_name", "-varz", "-jsz=all",
    f"http://localhost:{NATS_MONITOR_PORT}",
]


def config(*, secure: bool) -> str:
    """nats.conf: ``$POD_NAME`` comes from the pod's environment (the downward API)."""
    routes = "\n".join(f'    "nats-route://{host}:{NATS_CLUSTER_PORT}"' for host in nats_hosts())
    lines = [
        "server_name: $POD_NAME",
        f'listen: "0.0.0.0:{NATS_CLIENT_PORT}"',
        f"http_port: {NATS_MONITOR_PORT}",
        "# preStop signals lame duck mode through this file.",
        f'pid_file: "{PID_FILE}"',
        f'lame_duck_duration: "{LAME_DUCK}s"',
        f'lame_duck_grace_period: "{LAME_DUCK_GRACE}s"',
        "# A hung host leaves its queue groups within seconds, not the default 2 minutes.",
        f'ping_interval: "{PING_INTERVAL}"',
        f"ping_max: {PING_MAX}",
        "",
        "jetstream {",
        f'  store_dir: "{DATA_DIR}/jetstream"',
        f"  max_memory_store: {MAX_MEMORY_STORE}",
        f"  max_file_store: {MAX_FILE_STORE}",
        "}",
        "",
        "# Clustered: the mesh's hosts see the cluster's name in the server's INFO and choose R3",
        "# for their buckets and streams (clients also learn the other servers' URLs from it).",
        "cluster {",
        '  name: "mesh"',
        f'  listen: "0.0.0.0:{NATS_CLUSTER_PORT}"',
        "  routes: [",
        routes,
        "  ]",
        *(_route_tls_block() if secure else []),
        "}",
    ]
    if secure:
        lines += [
            "",
            "# The nkey users and their permissions from `mesh security init`.",
            # nats-server reads an include relative to the including file (CONFIG_DIR).
            'include "../security/nats-security.conf"',
            "# The include's tls block names the files where `mesh security init` ran; this one,",
            "# written after it, replaces it with where the Secret is mounted.",
            *_tls_block(),
        ]
    return "\n".join(lines) + "\n"


def _route_tls_block() -> list[str]:
    # Mutual TLS between the servers, with the route certificate of `mesh security init` (its own
    # CA, valid for server and client use): a certificate of the mesh CA cannot join as a route.
    return [
        "  tls {",
        f'    cert_file: "{SECURITY_DIR}/route-cert.pem"',
        f'    key_file: "{SECURITY_DIR}/route-key.pem"',
        f'    ca_file: "{SECURITY_DIR}/route-ca.pem"',
        "    verify: true",
        "    timeout: 2",
        "  }",
    ]


def _tls_block() -> list[str]:
    return [
        "tls {",
        f'  cert_file: "{SECURITY_DIR}/cert.pem"',
        f'  key_file: "{SECURITY_DIR}/key.pem"',
        f'  ca_file: "{SECURITY_DIR}/ca.pem"',
        "  # mTLS: clients present a certificate from the mesh's CA, besides their nkey.",
        "  verify: true",
        "  timeout: 2",
        "}",
    ]


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "monitor"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def statefulset() -> dict[str, Any]:
    """Three servers with JetStream on a volume each."""
    container: dict[str, Any] = {
        "name": NATS,
        "image": NATS_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["nats-server", "--config", f"{CONFIG_DIR}/nats.conf"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            # Go's collector keeps the heap under the container's memory limit.
            {"name": "GOMEMLIMIT", "value": "900MiB"},
        ],
        "ports": [
            {"name": "client", "containerPort": NATS_CLIENT_PORT},
            {"name": "cluster", "containerPort": NATS_CLUSTER_PORT},
            {"name": "monitor", "containerPort": NATS_MONITOR_PORT},
        ],
        "lifecycle": {"preStop": {"exec": {"command": ["nats-server", "--signal", f"ldm={PID_FILE}"]}}},
        # A server recovering a large store may take minutes: up to 15 of them before a restart.
        "startupProbe": _probe(PROBES["startupProbe"], period=10, failures=90),
        "readinessProbe": _probe(PROBES["readinessProbe"], period=10, failures=3),
        "livenessProbe": _probe(PROBES["livenessProbe"], period=30, failures=3),
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "run", "mountPath": PID_FILE.rsplit("/", 1)[0]},
        ],
    }
    exporter: dict[str, Any] = {
        "name": EXPORTER,
        "image": NATS_EXPORTER_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": EXPORTER_ARGS,
        "ports": [{"name": "metrics", "containerPort": NATS_METRICS_PORT}],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "250m", "memory": "128Mi"},
        },
        "securityContext": container_security(),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": NATS, "labels": labels(NATS, "broker")},
        "spec": {
            "serviceName": NATS,
            "replicas": NATS_NODES,
            # All at once: a JetStream cluster needs a quorum of servers before any is healthy.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(NATS)},
            "template": {
                "metadata": {
                    "labels": labels(NATS, "broker"),
                    "annotations": {
                        # kubectl exec and logs (docs/deploy.md) reach the server, not the sidecar.
                        "kubectl.kubernetes.io/default-container": NATS,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(NATS_METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": GRACE_PERIOD,
                    "securityContext": pod_security(fs_group=True),
                    # One server per node: two on one node would lose an R3 quorum with it.
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": selector(NATS)},
                    }],
                    "containers": [container, exporter],
                    "volumes": [
                        {"name": "config", "configMap": {"name": CONFIG_MAP}},
                        {"name": "run", "emptyDir": {}},
                    ],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": VOLUME_SIZE}}},
            }],
        },
    }


def statefulset_patch() -> dict[str, Any]:
    """Prod: mount the security include, the server certificate and the CA."""
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": NATS},
        "spec": {"template": {"spec": {
            "containers": [{
                "name": NATS,
                "volumeMounts": [{"name": "security", "mountPath": SECURITY_DIR, "readOnly": True}],
            }],
            "volumes": [secret_volume("security", SECURITY_SECRET)],
        }}},
    }


def services() -> list[dict[str, Any]]:
    """The headless Service that names the pods, and the client Service."""
    ports = [
        {"name": "client", "port": NATS_CLIENT_PORT, "targetPort": "client"},
        {"name": "cluster", "port": NATS_CLUSTER_PORT, "targetPort": "cluster"},
        {"name": "monitor", "port": NATS_MONITOR_PORT, "targetPort": "monitor"},
    ]
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NATS, "labels": labels(NATS, "broker")},
        "spec": {
            "clusterIP": "None",
            # Routes must resolve before the servers are ready: readiness needs the cluster.
            "publishNotReadyAddresses": True,
            "selector": selector(NATS),
            "ports": ports,
        },
    }
    client = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NATS_CLIENT_SERVICE, "labels": labels(NATS, "broker")},
        "spec": {"selector": selector(NATS), "ports": ports[:1]},
    }
    return [headless, client]


def pdb() -> dict[str, Any]:
    """At most one server down at a time by choice (drains, upgrades): R3 keeps its quorum."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": NATS, "labels": labels(NATS, "broker")},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(NATS)}},
    }


def network_policy() -> dict[str, Any]:
    """Clients from this namespace, routes between the servers, monitoring and metrics from anywhere."""
    dns = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    peers = [{"podSelector": {"matchLabels": selector(NATS)}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NATS, "labels": labels(NATS, "broker")},
        "spec": {
            "podSelector": {"matchLabels": selector(NATS)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": NATS_CLIENT_PORT}]},
                {"from": peers, "ports": [{"protocol": "TCP", "port": NATS_CLUSTER_PORT}]},
                # Probes and metrics scrapers: both ports are read-only.
                {"ports": [{"protocol": "TCP", "port": NATS_MONITOR_PORT},
                           {"protocol": "TCP", "port": NATS_METRICS_PORT}]},
            ],
            "egress": [
                {"to": peers, "ports": [{"protocol": "TCP", "port": NATS_CLUSTER_PORT}]},
                {"ports": dns},
            ],
        },
    }
