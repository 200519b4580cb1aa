"""The whole ``k8s/`` tree as text, writing it, and telling how a folder differs from it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh import catalogue
from mesh.k8s import alerts, dashboard, gateway, nats, observability, overlays, targets
from mesh.k8s.emit import documents
from mesh.k8s.readme import readme

__all__ = ["HEADER", "Difference", "Rendered", "compare", "render", "write"]

HEADER = "Rendered by `mesh k8s render` from mesh/k8s/ and the service catalogue"
_YAML_HEADER = f"# {HEADER}: change those and render again.\n"


@dataclass(frozen=True, slots=True)
class Rendered:
    """One file of the tree: its path under the output folder, its text, what it is, and (for
    YAML) the objects its text holds."""

    path: str
    text: str
    about: str
    objects: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Difference:
    """How a folder differs from the rendered tree (paths relative to it)."""

    changed: tuple[str, ...]
    missing: tuple[str, ...]
    stale: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.stale)

    def summary(self) -> str:
        """One line: the counts, then the paths."""
        parts = [f"{len(paths)} {label}" for label, paths in
                 (("changed", self.changed), ("missing", self.missing), ("stale", self.stale)) if paths]
        return f"{', '.join(parts)}: {' '.join((*self.changed, *self.missing, *self.stale))}"


def _yaml(path: str, items: Sequence[Mapping[str, Any]], about: str) -> Rendered:
    return Rendered(path, _YAML_HEADER + documents(items), about, tuple(items))


def _text(path: str, text: str, about: str) -> Rendered:
    return Rendered(path, _YAML_HEADER + text, about)


def render(target_names: Sequence[str] | None = None) -> list[Rendered]:
    """Every file, README last (it lists the others). ``target_names`` defaults to the built
    targets of the catalogue."""
    names = list(catalogue.built_targets() if target_names is None else target_names)
    files = [*_base(names), *_dev(), *_prod(names), *_observability()]
    files.append(Rendered("README.md", readme(files, HEADER), "this file"))
    return files


def _base(names: Sequence[str]) -> list[Rendered]:
    files = [
        _yaml("base/namespace.yaml", [overlays.namespace()], "the namespace, restricted Pod Security Standard"),
        _text("base/nats/nats.conf", nats.config(secure=False),
              "nats-server configuration (no TLS, no users): 3-node cluster, JetStream, lame duck"),
        _yaml("base/nats/statefulset.yaml", [nats.statefulset()],
              "3 NATS servers with JetStream on a volume each, probes on :8222, lame-duck preStop"),
        _yaml("base/nats/services.yaml", nats.services(),
              "headless Service `nats` (pods nats-N.nats: 4222, 6222, 8222) and client Service `nats-client`"),
        _yaml("base/nats/pdb.yaml", [nats.pdb()], "at most one NATS server down by choice"),
        _yaml("base/nats/network-policy.yaml", [nats.network_policy()],
              "NATS: clients from the namespace, routes between servers, monitoring port"),
    ]
    for name in names:
        files.append(_yaml(f"base/targets/{name}.yaml", targets.objects(name),
                           f"`mesh serve {name}`: Deployment, PodDisruptionBudget, HorizontalPodAutoscaler"))
    files += [
        _yaml("base/targets/network-policy.yaml", [targets.network_policy_for_targets()],
              "targets: in only on :8080 (probes, metrics), out only to NATS :4222 and DNS"),
        _yaml("base/gateway/gateway.yaml", gateway.objects(),
              "`mesh gateway`: Deployment, Service (:50051 gRPC, :8000 HTTP), PDB, autoscaler"),
        _yaml("base/gateway/network-policy.yaml", [gateway.network_policy_for_gateway()],
              "gateway: in on :50051, :8000 and :8080, out only to NATS :4222 and DNS"),
    ]
    resources = [f.path.removeprefix("base/") for f in files if f.path.endswith(".yaml")]
    files.append(_yaml("base/kustomization.yaml", [overlays.base_kustomization(resources)],
                       "the base: every file above, nats.conf as a generated ConfigMap"))
    return files


def _dev() -> list[Rendered]:
    files = [_yaml(f"overlays/dev/patches/{name}", [patch], "dev: smaller requests")
             for name, patch in overlays.dev_patches().items()]
    files.append(_yaml("overlays/dev/kustomization.yaml", [overlays.dev_kustomization()],
                       "dev overlay: the base (open NATS, one replica each) with small requests"))
    return files


def _prod(names: Sequence[str]) -> list[Rendered]:
    files = [
        _text("overlays/prod/.gitignore", f"/{overlays.SECURITY}/\n",
              "keeps `security/` (keys, seeds, certificates) out of git"),
        _text("overlays/prod/nats.conf", nats.config(secure=True),
              "nats-server configuration with mTLS to clients and the users of `mesh security init`"),
        _yaml("overlays/prod/patches/nats.yaml", [nats.statefulset_patch()],
              "prod: mounts the NATS security Secret"),
        _yaml("overlays/prod/patches/autoscaling.yaml", [overlays.prod_autoscaling_patch()],
              "prod: every autoscaler between 2 and 8 replicas"),
        _yaml("overlays/prod/patches/gateway.yaml", [gateway.prod_patch()],
              "prod: gateway with the ingress identity and TLS to clients, 2 replicas"),
    ]
    for name in names:
        files.append(_yaml(f"overlays/prod/patches/targets/{name}.yaml", [targets.prod_patch(name)],
                           f"prod: {name} as its own NATS identity, 2 replicas spread over nodes"))
    patches = [f.path.removeprefix("overlays/prod/") for f in files
               if f.path.startswith("overlays/prod/patches/") and not f.path.endswith("autoscaling.yaml")]
    files.append(_yaml("overlays/prod/kustomization.yaml", [overlays.prod_kustomization(names, patches)],
                       "prod overlay: secure nats.conf, Secrets from `security/`, the patches above"))
    return files


def _observability() -> list[Rendered]:
    folder = observability.FOLDER
    return [
        _yaml(f"{folder}/{observability.MONITORS_FILE}", observability.pod_monitors(),
              "PodMonitors: the admin port (`/metrics`) of every target and the gateway, NATS's exporter"),
        _yaml(f"{folder}/{observability.RULES_FILE}", [alerts.prometheus_rule()],
              "PrometheusRule: errors, p99 latency, replicas, CPU and memory, NATS, circuits, dropped messages"),
        # JSON has no comments: the dashboard's description carries the header (its second line).
        Rendered(f"{folder}/{observability.DASHBOARD_FILE}", dashboard.text(HEADER),
                 "the Grafana dashboard, to import by hand"),
        _yaml(f"{folder}/kustomization.yaml", [observability.kustomization()],
              "the files above, the dashboard also as a ConfigMap for Grafana's sidecar (`grafana_dashboard: \"1\"`)"),
    ]


def write(files: Sequence[Rendered], out: Path) -> list[Path]:
    """Write ``files`` under ``out``; remove rendered files no longer rendered. The paths written."""
    written = []
    for file in files:
        path = out / file.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != file.text:
            path.write_text(file.text)
            written.append(path)
    for stale in _stale(files, out):
        (out / stale).unlink()
    return written


def compare(files: Sequence[Rendered], out: Path) -> Difference:
    """How ``out`` differs from ``files``."""
    changed, missing = [], []
    for file in files:
        path = out / file.path
        if not path.is_file():
            missing.append(file.path)
        elif path.read_text() != file.text:
            changed.append(file.path)
    return Difference(tuple(changed), tuple(missing), tuple(_stale(files, out)))


def _stale(files: Sequence[Rendered], out: Path) -> list[str]:
    # Only files this command wrote (they carry its header): a user's own overlay or the
    # secrets in security/ are never reported or removed.
    wanted = {file.path for file in files}
    return sorted(
        relative for path in out.rglob("*") if path.is_file()
        and (relative := path.relative_to(out).as_posix()) not in wanted
        and _is_rendered(path)
    )


def _is_rendered(path: Path) -> bool:
    # The header is on the first line, or on the second of a JSON file (after its "{").
    try:
        with path.open(errors="replace") as file:
            return any(HEADER in file.readline() for _ in range(2))
    except OSError:
        return False
