"""Settings of ``mesh up``, validated once, with errors that name the command-line flag at fault."""

from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import combinations
from pathlib import Path
from urllib.parse import urlsplit

# Schemes nats-py accepts in a server URL.
NATS_URL_SCHEMES = ("nats", "tls", "ws", "wss")
LOOPBACK = "127.0.0.1"
# Odd sizes only: a JetStream cluster needs a majority, so an even node adds no tolerance.
CLUSTER_SIZES = (1, 3, 5)
# The embedded nodes' ports: a node's client, monitoring and route ports are its flag's port
# plus the node's index.
_NODE_PORTS = ("nats_port", "nats_monitor_port", "nats_cluster_port")


class ConfigError(ValueError):
    """A setting is invalid; ``flag`` is the command-line flag that set it (``--nats-port``)."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


def flag_of(field_name: str) -> str:
    """The command-line flag of a setting: ``nats_port`` -> ``--nats-port``."""
    return "--" + field_name.replace("_", "-")


@dataclass(frozen=True, slots=True, kw_only=True)
class UpConfig:
    """What ``mesh up`` runs and where.

    With ``cluster`` N > 1 the embedded NATS is N routed nodes: node i listens on
    ``nats_port + i``, ``nats_monitor_port + i`` and (routes) ``nats_cluster_port + i``.
    ``ingress_workers`` processes serve the gRPC ingress's port (1: ``mesh up``'s own process).
    """

    nats_port: int = 4222
    nats_monitor_port: int = 8222
    nats_cluster_port: int = 6222
    grpc_port: int = 50051
    http_port: int = 8000
    admin_port: int = 8080
    data_dir: Path = Path(".mesh-data")
    nats_url: str | None = None
    secure: bool = False
    cluster: int = 1
    ingress_workers: int = 1

    def __post_init__(self) -> None:
        if self.ingress_workers < 1:
            raise ConfigError(flag_of("ingress_workers"), f"must be at least 1 (or auto), got {self.ingress_workers}")
        if self.cluster not in CLUSTER_SIZES:
            sizes = ", ".join(map(str, CLUSTER_SIZES))
            raise ConfigError(flag_of("cluster"), f"must be one of {sizes}, got {self.cluster}")
        if self.cluster > 1 and self.nats_url is not None:
            raise ConfigError(flag_of("cluster"), "cannot be combined with --nats-url (the cluster is embedded)")
        for field in fields(self):
            if field.name.endswith("_port"):
                _check_port(field.name, getattr(self, field.name))
        if self.nats_url is not None:
            _check_nats_url(self.nats_url)
        ports = self.listening_ports()
        for name, port in ports.items():
            _check_port(name, port)
        _check_distinct(ports)
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ConfigError(flag_of("data_dir"), f"{self.data_dir} exists and is not a directory")

    @property
    def embedded(self) -> bool:
        """True when ``mesh up`` starts its own nats-server (no ``--nats-url`` given)."""
        return self.nats_url is None

    @property
    def secrets_dir(self) -> Path:
        """Where ``mesh security init`` keeps the CA and one folder per identity."""
        return self.data_dir / "secrets"

    @property
    def client_urls(self) -> tuple[str, ...]:
        """The NATS URLs services connect to: every embedded node, so a client fails over."""
        if self.nats_url is not None:
            return tuple(u.strip() for u in self.nats_url.split(","))
        return tuple(f"nats://{LOOPBACK}:{self.nats_port + i}" for i in range(self.cluster))

    @property
    def client_url(self) -> str:
        """:attr:`client_urls`, comma-separated (how nats clients take a server list)."""
        return ",".join(self.client_urls)

    def listening_ports(self) -> dict[str, int]:
        """Ports this process and its children will listen on, by setting name (a cluster node's
        as ``nats_port+1``); the NATS ones only if embedded, route ports only in a cluster."""
        names = [*_NODE_PORTS[: 3 if self.cluster > 1 else 2]] if self.embedded else []
        ports = {f"{name}+{i}" if i else name: getattr(self, name) + i
                 for name in names for i in range(self.cluster)}
        return ports | {name: getattr(self, name) for name in ("grpc_port", "http_port", "admin_port")}


def _check_port(name: str, port: int) -> None:
    # Port 0 ("any free port") is refused: the printed table and clients need the real number.
    if not 1 <= port <= 65535:
        base, _, node = name.partition("+")
        where = f" (node {node} of the cluster listens on {flag_of(base)} + {node})" if node else ""
        raise ConfigError(flag_of(base), f"port must be between 1 and 65535, got {port}{where}")


def _check_nats_url(url: str) -> None:
    # nats-py takes a comma-separated list of servers; each must be complete on its own.
    for server in url.split(","):
        parts = urlsplit(server.strip())
        try:
            parts.port  # noqa: B018 - evaluated only because it raises on a bad port
        except ValueError as error:
            raise ConfigError(flag_of("nats_url"), f"bad port in {server!r}: {error}") from error
        if parts.scheme not in NATS_URL_SCHEMES or not parts.hostname:
            schemes = "|".join(NATS_URL_SCHEMES)
            raise ConfigError(flag_of("nats_url"), f"expected {schemes}://host[:port], got {server!r}")


def _check_distinct(ports: dict[str, int]) -> None:
    for (first, a), (second, b) in combinations(ports.items(), 2):
        if a == b:
            raise ConfigError(_flag_of_port(second), f"port {b} is also given to {_describe_port(first)}")


def _flag_of_port(name: str) -> str:
    return flag_of(name.partition("+")[0])


def _describe_port(name: str) -> str:
    base, _, node = name.partition("+")
    return f"{flag_of(base)} + {node} (cluster node {node})" if node else flag_of(base)
