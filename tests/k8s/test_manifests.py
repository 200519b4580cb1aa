"""The rendered manifests, statically: valid Kubernetes objects, a complete set per target, and
pods that say what ``mesh serve``, ``mesh gateway`` and nats-server actually take and serve."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mesh import catalogue, serve
from mesh.cli import build_parser
from mesh.k8s import render
from mesh.k8s.common import ADMIN_PORT, IDENTITY_ROOT, NATS
from mesh.k8s.nats import PROBES
from tests.k8s._kustomize import generator_files, kustomization
from tests.k8s._objects import OVERLAYS, container, env, mesh_pods, overlay, workloads

# The oldest Kubernetes the manifests promise (docs/deploy.md) and the newest schemas shipped
# with kubernetes-validate==1.37.0: an API removed or a field renamed in between fails one.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
REPO = Path(__file__).resolve().parents[2]


def _base_objects() -> list[dict[str, Any]]:
    return [obj for file in render() if file.path.startswith("base/")
            and not file.path.endswith("kustomization.yaml") for obj in file.objects]


def test_every_rendered_yaml_file_reads_back_as_exactly_the_objects_rendered() -> None:
    for file in render():
        if file.path.endswith(".yaml"):
            assert list(yaml.safe_load_all(file.text)) == [dict(obj) for obj in file.objects], file.path


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_of_the_base_and_of_each_overlay_is_strictly_valid_kubernetes(tree: Path, version: str) -> None:
    objects = [*_base_objects(), *(obj for name in OVERLAYS for obj in overlay(tree, name).objects)]
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {error.message} "
                                 f"at {'.'.join(map(str, error.path))}") from None


def test_every_file_a_kustomization_names_exists_and_every_rendered_file_is_named_by_one(tree: Path) -> None:
    named: set[Path] = set()
    for folder in (tree / "base", tree / "overlays" / "dev", tree / "overlays" / "prod", tree / "observability"):
        spec = kustomization(folder)
        for resource in spec.get("resources", []):
            path = (folder / resource).resolve()
            assert path.exists(), f"{folder.name}: {resource}"
            named.add(path)
        for patch in spec.get("patches", []):
            assert (folder / patch["path"]).is_file(), patch
            named.add((folder / patch["path"]).resolve())
        for entry in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
            for source in generator_files(folder, entry).values():
                # Every generator file exists once the documented `mesh security init` ran.
                assert source.is_file(), f"{entry['name']}: {source}"
                named.add(source.resolve())
    rendered = {(tree / f.path).resolve() for f in render()
                if f.path.endswith((".yaml", ".conf", ".json")) and not f.path.endswith("kustomization.yaml")}
    assert rendered - named == set()


def test_the_prod_secrets_come_only_from_the_git_ignored_security_folder(tree: Path) -> None:
    prod = tree / "overlays" / "prod"
    assert "/security/" in (prod / ".gitignore").read_text().splitlines()
    for entry in kustomization(prod)["secretGenerator"]:
        for source in generator_files(prod, entry).values():
            assert source.resolve().is_relative_to((prod / "security").resolve()), source
    if (REPO / ".git").exists() and shutil.which("git"):
        # git itself agrees: what `mesh security init` writes there is never committed.
        key = "k8s/overlays/prod/security/secrets/ca/ca.key"
        assert subprocess.run(["git", "check-ignore", "--quiet", "--no-index", key], cwd=REPO).returncode == 0


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_catalogue_target_has_a_deployment_a_disruption_budget_and_an_autoscaler(tree: Path, name: str) -> None:
    built = overlay(tree, name)
    for target in catalogue.built_targets():
        deployment = built.find("Deployment", target)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert container(deployment)["args"][:2] == ["serve", target]
        budget = built.find("PodDisruptionBudget", target)["spec"]
        assert budget["maxUnavailable"] == 1
        assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
        scaler = built.find("HorizontalPodAutoscaler", target)["spec"]
        assert scaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}
        assert scaler["metrics"][0]["resource"]["name"] == "cpu"
        assert scaler["minReplicas"] <= deployment["spec"]["replicas"] <= scaler["maxReplicas"]
    if name == "prod":
        assert all(built.find("Deployment", t)["spec"]["replicas"] >= 2 for t in catalogue.built_targets())


@pytest.mark.parametrize("name", OVERLAYS)
def test_mesh_pods_probe_livez_and_readyz_on_the_admin_port_they_are_told_to_serve(tree: Path, name: str) -> None:
    for deployment in mesh_pods(overlay(tree, name)):
        main = container(deployment)
        args = main["args"]
        admin = int(args[args.index("--admin-port") + 1])
        assert admin == ADMIN_PORT
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        paths = {kind: main[kind]["httpGet"]["path"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert paths == {"startupProbe": "/livez", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
        for kind in paths:
            assert ports[main[kind]["httpGet"]["port"]] == admin


def test_nats_probes_are_on_the_monitoring_port_with_the_documented_checks(tree: Path) -> None:
    statefulset = overlay(tree, "prod").find("StatefulSet", NATS)
    main = container(statefulset)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    for kind, path in PROBES.items():
        assert main[kind]["httpGet"] == {"path": path, "port": "monitor"}
    assert ports["monitor"] == 8222
    assert main["lifecycle"]["preStop"]["exec"]["command"] == ["nats-server", "--signal", "ldm=/var/run/nats/nats.pid"]


def _settings_read_by(target: str) -> str:
    """The source of ``target``'s servicer package, where its settings are read by name."""
    module = importlib.import_module(f"servicers.{catalogue.CATALOGUE[target]}")
    folder = Path(module.__file__ or "").parent
    files = folder.glob("*.py") if Path(module.__file__ or "").name == "__init__.py" else [Path(module.__file__ or "")]
    return "\n".join(path.read_text() for path in files)


def _gateway_settings() -> set[str] | None:
    try:
        gateway_command = importlib.import_module("mesh.gateway_command")
    except ModuleNotFoundError:
        return None
    connection = {s.env for s in serve.SETTINGS if s.dest in serve.CONNECTION_SETTINGS}
    return connection | {s.env for s in gateway_command.SETTINGS}


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_mesh_variable_is_a_setting_the_command_in_that_pod_reads(tree: Path, name: str) -> None:
    serve_settings = {s.env for s in serve.SETTINGS} | {"MESH_TARGETS"}
    for deployment in mesh_pods(overlay(tree, name)):
        command, *rest = container(deployment)["args"]
        variables = [v for v in env(deployment) if v.startswith("MESH_")]
        if command == "gateway":
            known = _gateway_settings()
            if known is None:
                pytest.skip("mesh gateway is not in this checkout yet")
            assert set(variables) <= known, set(variables) - known
            continue
        assert command == "serve"
        target = rest[0]
        prefix = "MESH_" + target.upper().replace("-", "_") + "_"
        for variable in variables:
            if variable in serve_settings:
                continue
            assert variable.startswith(prefix), f"{target}: {variable} is no setting of mesh serve"
            setting = variable.removeprefix(prefix).lower()
            assert f'"{setting}"' in _settings_read_by(target), f"{target} reads no setting {setting!r}"


def test_every_mesh_pod_command_line_and_environment_resolve_as_the_command_would(tree: Path) -> None:
    parser = build_parser()
    for deployment in mesh_pods(overlay(tree, "dev")):
        main = container(deployment)
        args = parser.parse_args(main["args"])
        if main["args"][0] == "serve":
            config, _ = serve.resolve(args, env(deployment))
            assert config.targets == (deployment["metadata"]["name"],)
            assert config.admin_port == ADMIN_PORT
            assert len(config.nats.urls) == 3
        else:
            gateway_command = importlib.import_module("mesh.gateway_command")
            gateway = gateway_command.resolve(args, env(deployment))
            ports = {p["name"]: p["containerPort"] for p in main["ports"]}
            assert (gateway.grpc_port, gateway.http_port, gateway.admin_port) == (
                ports["grpc"], ports["http"], ports["admin"])


def test_prod_mesh_pods_connect_as_their_own_identity_mounted_from_its_secret(tree: Path) -> None:
    built = overlay(tree, "prod")
    for deployment in mesh_pods(built):
        main = container(deployment)
        variables = env(deployment)
        identity = deployment["metadata"]["name"] if main["args"][0] == "serve" else "ingress"
        folder = f"{IDENTITY_ROOT}/{identity}"
        if main["args"][0] == "serve":
            # --secrets, not --identity: with it the host also signs for its service tokens.
            assert variables["MESH_SECRETS_DIR"] == IDENTITY_ROOT
        else:
            assert variables["MESH_IDENTITY"] == folder
        (mount,) = [m for m in main["volumeMounts"] if m["mountPath"] == folder]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        secret = volumes[mount["name"]]["secret"]["secretName"]
        files = built.secrets[secret]
        assert set(files) == {"cert.pem", "key.pem", "ca.pem", "nkey.seed", "identity.json"}
        assert all(source.parent.name == identity for source in files.values())
    auth = env(built.find("Deployment", "auth"))
    assert auth["MESH_AUTH_SERVICE_KEYS"].endswith("/service-keys.json")


@pytest.mark.parametrize("name", OVERLAYS)
def test_termination_grace_outlasts_the_drain_each_pod_is_configured_for(tree: Path, name: str) -> None:
    for deployment in mesh_pods(overlay(tree, name)):
        spec = deployment["spec"]["template"]["spec"]
        main = container(deployment)
        sleep = main["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep"
        variables = env(deployment)
        drain = int(sleep[1]) + float(variables.get("MESH_DRAIN_PAUSE", 1)) + float(variables["MESH_GRACE"])
        assert spec["terminationGracePeriodSeconds"] > drain, deployment["metadata"]["name"]
    statefulset = overlay(tree, name).find("StatefulSet", NATS)
    conf = (tree / "base" / "nats" / "nats.conf").read_text()
    lame_duck = sum(int(line.split('"')[1].rstrip("s")) for line in conf.splitlines()
                    if line.startswith(("lame_duck_duration", "lame_duck_grace_period")))
    assert statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > lame_duck


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_pod_is_restricted_non_root_read_only_and_without_a_service_account_token(tree: Path, name: str) -> None:
    for workload in workloads(overlay(tree, name)):
        spec = workload["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        main = container(workload)
        context = main["securityContext"]
        assert context["runAsUser"] == 10001
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert "resources" in main
        assert {"requests", "limits"} <= set(main["resources"])
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                "app.kubernetes.io/part-of"} <= set(labels)
        if main["command"] == ["mesh"]:
            assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]


def test_targets_may_reach_only_nats_and_dns_and_be_reached_only_on_the_admin_port(tree: Path) -> None:
    built = overlay(tree, "prod")
    policy = built.find("NetworkPolicy", "mesh-targets")["spec"]
    selected = [o for o in built.objects if o["kind"] == "Deployment"
                and policy["podSelector"]["matchLabels"].items() <= o["spec"]["template"]["metadata"]["labels"].items()]
    assert sorted(o["metadata"]["name"] for o in selected) == sorted(catalogue.built_targets())
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": ADMIN_PORT}]}]
    nats_labels = built.find("StatefulSet", NATS)["spec"]["template"]["metadata"]["labels"]
    to_nats, dns = policy["egress"]
    assert to_nats["ports"] == [{"protocol": "TCP", "port": 4222}]
    assert to_nats["to"][0]["podSelector"]["matchLabels"].items() <= nats_labels.items()
    assert {p["port"] for p in dns["ports"]} == {53}
    assert "to" not in dns


def test_nats_config_keeps_client_urls_advertised_and_runs_three_routed_jetstream_servers(tree: Path) -> None:
    for path in (tree / "base" / "nats" / "nats.conf", tree / "overlays" / "prod" / "nats.conf"):
        text = path.read_text()
        settings = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]
        assert not any(line.startswith("no_advertise") for line in settings)
        assert "server_name: $POD_NAME" in text
        assert all(f'"nats-route://nats-{i}.nats:6222"' in text for i in range(3))
    assert overlay(tree, "prod").find("StatefulSet", NATS)["spec"]["replicas"] == 3


def test_the_checkout_tree_has_no_file_the_renderer_does_not_know() -> None:
    rendered = {file.path for file in render()}
    found = {p.relative_to(REPO / "k8s").as_posix() for p in (REPO / "k8s").rglob("*")
             if p.is_file() and "security" not in p.relative_to(REPO / "k8s").parts}
    assert found == rendered
