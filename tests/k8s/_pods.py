"""Run a pod of the rendered manifests as a local process, the way a kubelet would, give or take:
its volumes become folders under a private root (ConfigMaps and Secrets filled from their
generators' files), every absolute path in its configuration and environment moves under that
root, the cluster's names and ports become loopback and free ports, and its command runs.

Nothing is rewritten silently: each rewrite of a host or port must find what it replaces.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats_transport.testing import find_nats_server
from tests.k8s._kustomize import Built
from tests.k8s._objects import main_container

LOOPBACK = "127.0.0.1"
_QUOTED_PATH = re.compile(r'"(/[^"]*)"')
_ABSOLUTE = re.compile(r"(^|=)/")
_CLUSTER_NAME = re.compile(r"\.nats:\d")


@dataclass
class Network:
    """The cluster's addresses seen from this machine: ``host:port`` -> a loopback port."""

    routes: dict[tuple[str, int], int] = field(default_factory=dict)

    def rewrite(self, text: str) -> str:
        for (host, port), local in self.routes.items():
            text = text.replace(f"{host}:{port}", f"{LOOPBACK}:{local}")
        return text


@dataclass
class Pod:
    """One pod's container as a local process."""

    name: str
    root: Path
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]  # container port name -> local port
    probes: dict[str, str]  # probe kind -> local URL
    pre_stop: list[str] | None
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "pod.log"

    def start(self) -> None:
        # The test's own MESH_* settings must not leak into the pod: it gets the manifest's only.
        base = {key: value for key, value in os.environ.items() if not key.startswith("MESH_")}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.argv, env={**base, **self.env}, cwd=self.root,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def probe(self, kind: str) -> int:
        """The HTTP status of the pod's ``kind`` probe (0 when nothing answers)."""
        try:
            with urllib.request.urlopen(self.probes[kind], timeout=2) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def run_pre_stop(self) -> None:
        assert self.pre_stop is not None
        subprocess.run(self.pre_stop, env={**os.environ, **self.env}, cwd=self.root, check=True, timeout=10)

    def terminate(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.running():
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _executable(name: str) -> list[str]:
    # The image's executables, as installed here.
    return {"mesh": [sys.executable, "-m", "mesh"], "nats-server": [find_nats_server()]}[name]


def _replace_counted(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} not found in {text!r}"
    return text.replace(old, new)


def pod_of(workload: Mapping[str, Any], built: Built, name: str, root: Path, network: Network,
           ports: Mapping[str, int]) -> Pod:
    """Prepare pod ``name`` of ``workload`` (a Deployment or StatefulSet) under ``root``.

    ``ports``: container port name -> the local port it gets.
    """
    spec = workload["spec"]["template"]["spec"]
    # The pod's own container; a sidecar (NATS's metrics exporter) does not run here.
    container = main_container(workload["spec"]["template"])
    container_ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert set(ports) == set(container_ports), (ports, container_ports)

    def localise(text: str) -> str:
        # A port given alone (--admin-port 8080, MESH_GATEWAY_GRPC_PORT), a cluster address, or
        # an absolute path (alone or after "=", as in ldm=/var/run/nats/nats.pid).
        for port_name, port in container_ports.items():
            if text == str(port):
                return str(ports[port_name])
        text = _ABSOLUTE.sub(lambda match: f"{match.group(1)}{root}/", network.rewrite(text))
        assert not _CLUSTER_NAME.search(text), f"a cluster address is left in {text!r}"
        return text

    root.mkdir(parents=True)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for claim in workload["spec"].get("volumeClaimTemplates", []):
        volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"], "claim": True}
    for mount in container.get("volumeMounts", []):
        _mount(volumes[mount["name"]], root / mount["mountPath"].lstrip("/"), built, root, network, ports,
               container_ports)
    env = {}
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, variable
            env[variable["name"]] = name
        else:
            env[variable["name"]] = localise(variable["value"])
    command = container["command"]
    argv = [*_executable(command[0]), *(localise(a) for a in [*command[1:], *container.get("args", [])])]
    probes = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[kind]["httpGet"]
        probes[kind] = f"http://{LOOPBACK}:{ports[get['port']]}{get['path']}"
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if pre_stop is not None:
        pre_stop = [*(_executable(pre_stop[0]) if pre_stop[0] != "sleep" else ["sleep"]),
                    *(localise(a) for a in pre_stop[1:])]
    return Pod(name, root, argv, env, dict(ports), probes, pre_stop)


def _mount(volume: Mapping[str, Any], at: Path, built: Built, root: Path, network: Network,
           ports: Mapping[str, int], container_ports: Mapping[str, int]) -> None:
    at.mkdir(parents=True, exist_ok=True)
    if "configMap" in volume:
        for key, source in built.config_maps[volume["configMap"]["name"]].items():
            (at / key).write_text(_localise_config(source.read_text(), root, network, ports, container_ports))
    elif "secret" in volume:
        for key, source in built.secrets[volume["secret"]["secretName"]].items():
            shutil.copyfile(source, at / key)
            (at / key).chmod(0o600)
    else:
        assert "emptyDir" in volume or volume.get("claim"), volume


def _localise_config(text: str, root: Path, network: Network, ports: Mapping[str, int],
                     container_ports: Mapping[str, int]) -> str:
    """A configuration file of ours (nats.conf): its listen addresses, the cluster's names, and
    its absolute paths (a Secret's files, written by `mesh security init`, stay as they are)."""
    monitor = container_ports["monitor"]
    text = _replace_counted(text, f"http_port: {monitor}", f'http: "{LOOPBACK}:{ports["monitor"]}"')
    for port_name, port in container_ports.items():
        if port_name != "monitor":
            text = _replace_counted(text, f'"0.0.0.0:{port}"', f'"{LOOPBACK}:{ports[port_name]}"')
    text = network.rewrite(text)
    assert not _CLUSTER_NAME.search(text), f"a cluster address is left in:\n{text}"
    return _QUOTED_PATH.sub(lambda match: f'"{root}{match.group(1)}"', text)
