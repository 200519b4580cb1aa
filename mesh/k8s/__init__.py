"""Kubernetes manifests rendered from the service catalogue (``mesh k8s render``).

The tree (``k8s/`` of the checkout) is a Kustomize base (NATS, one Deployment per target, the
gateway), the ``dev`` and ``prod`` overlays, and ``observability/`` (PodMonitors, alert rules, the
Grafana dashboard), written as plain YAML (and JSON) by a small deterministic
emitter: everything is built as Python dicts here, so tests read the same objects the cluster
gets, and ``--check`` tells when the committed files have drifted.
"""

from __future__ import annotations

from mesh.k8s.render import Difference, Rendered, compare, render, write

__all__ = ["Difference", "Rendered", "compare", "render", "write"]
