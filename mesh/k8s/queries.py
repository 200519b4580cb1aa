"""The PromQL the alert rules and the dashboard share, and the labels it relies on.

Which series are whose:

- The mesh pods' ``/metrics`` (``grpc_server_*``, ``grpc_client_*``, ``nats_transport_*``) are
  scraped by the PodMonitor ``mesh`` with ``jobLabel: app.kubernetes.io/name``, so ``job`` is
  the Deployment's name: the target (``auth``, ``quest-system``...) or ``mesh-gateway``. The
  metrics' own ``target`` label stays theirs: the target served (in-flight, stalls) or called
  (circuit state).
- The NATS pods' exporter sidecar: ``gnatsd_varz_*`` and ``jetstream_*`` (``job="nats"``).
- kube-state-metrics (``kube_*``) and the kubelet's cAdvisor (``container_*``), which a
  kube-prometheus-stack scrapes already.

Every query selects ``namespace`` (the rendered tree's, or the dashboard's variable): the
grpc-ecosystem names are shared with whatever else the cluster runs.
"""

from __future__ import annotations

from mesh.k8s.common import NAMESPACE

__all__ = [
    "CALLER_CODES",
    "SERVER_FAULT_CODES",
    "cpu_of_limit",
    "error_ratio",
    "jetstream_replica_lag",
    "latency_quantile",
    "matchers",
    "memory_of_limit",
]

# The codes that count as the server's failure in the error ratio: those grpc-gateway answers as
# HTTP 5xx. DEADLINE_EXCEEDED counts (the server was slower than its caller's deadline);
# UNIMPLEMENTED counts (a caller newer than the replica, or a missing method: a deploy problem).
SERVER_FAULT_CODES = ("UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS")
# The caller's doing, or an answer the protocol expects (HTTP 4xx, and 499 for CANCELLED): a bad
# or unauthorised request, a key that is not there, a lost compare-and-set (ABORTED, the
# servicers' REVISION_CONFLICT). RESOURCE_EXHAUSTED is here because in this mesh it answers the
# caller's behaviour (auth's lockout, a stream sent faster than its credit, a backend's rate
# limit); a replica refusing calls at its own concurrency limit shows as
# nats_transport_rejected_total on the dashboard instead.
CALLER_CODES = ("CANCELLED", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
                "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNAUTHENTICATED")
# cAdvisor's per-pod totals (container="") and the pause container are not containers of ours.
_CONTAINERS = 'container!="", container!="POD"'


def matchers(*extra: str, namespace: str = NAMESPACE) -> str:
    """Label matchers (without braces): the namespace, then ``extra``."""
    return ", ".join((f'namespace="{namespace}"', *extra))


def error_ratio(select: str, window: str, by: str) -> str:
    """Calls that failed by the server's fault over all calls handled, per ``by``."""
    faults = "|".join(SERVER_FAULT_CODES)
    return "\n".join([
        f"sum by ({by}) (rate(grpc_server_handled_total{{{select}, grpc_code=~\"{faults}\"}}[{window}]))",
        "/",
        f"sum by ({by}) (rate(grpc_server_handled_total{{{select}}}[{window}]))",
    ])


def latency_quantile(quantile: float, select: str, window: str, by: str) -> str:
    """The ``quantile`` of the server's handling time per ``by``, from the histogram's buckets."""
    return (f"histogram_quantile({quantile}, sum by ({by}, le) "
            f"(rate(grpc_server_handling_seconds_bucket{{{select}}}[{window}])))")


def cpu_of_limit(select: str, window: str) -> str:
    """CPU used over the CPU limit, per container (cAdvisor over kube-state-metrics)."""
    by = "namespace, pod, container"
    return "\n".join([
        f"sum by ({by}) (rate(container_cpu_usage_seconds_total{{{select}, {_CONTAINERS}}}[{window}]))",
        "/",
        f"sum by ({by}) (kube_pod_container_resource_limits{{{select}, resource=\"cpu\"}})",
    ])


def memory_of_limit(select: str) -> str:
    """Working set (what the kernel's OOM killer weighs) over the memory limit, per container."""
    by = "namespace, pod, container"
    return "\n".join([
        f"max by ({by}) (container_memory_working_set_bytes{{{select}, {_CONTAINERS}}})",
        "/",
        f"sum by ({by}) (kube_pod_container_resource_limits{{{select}, resource=\"memory\"}})",
    ])


def jetstream_replica_lag(select: str, behind: str) -> str:
    """Per stream and follower: how far the follower's last sequence is short of where the
    stream's leader was ``behind`` ago (above 0: it is more than ``behind`` late).

    The exporter has no replica-lag series (its ``*_lag`` series are of sources and mirrors),
    but each server reports the last sequence of its own replica of every stream. The leader is
    compared as it was ``behind`` ago, so a busy stream's followers, read a few seconds apart
    from the leader by separate scrapes, do not look behind.
    """
    stream = "namespace, account, stream_name"
    return "\n".join([
        f"max by ({stream}) (jetstream_stream_last_seq{{{select}, is_stream_leader=\"true\"}} offset {behind})",
        f"- on ({stream}) group_right ()",
        f"max by ({stream}, server_name) (jetstream_stream_last_seq{{{select}, is_stream_leader=\"false\"}})",
    ])
