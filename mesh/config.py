"""Settings of ``mesh up``, validated once, with errors that name the command-line flag at fault."""

from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import combinations
from pathlib import Path
from urllib.parse import urlsplit

# Schemes nats-py accepts in a server URL.
NATS_URL_SCHEMES = ("nats", "tls", "ws", "wss")
LOOPBACK = "127.0.0.1"


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

    The gRPC, HTTP and admin ports are validated now although nothing listens on them yet, so a
    bad value fails today rather than when those parts arrive.
    """

    nats_port: int = 4222
    nats_monitor_port: int = 8222
    grpc_port: int = 50051
    http_port: int = 8000
    admin_port: int = 8080
    data_dir: Path = Path(".mesh-data")
    nats_url: str | None = None
    secure: bool = False

    def __post_init__(self) -> None:
        for field in fields(self):
            if field.name.endswith("_port"):
                _check_port(field.name, getattr(self, field.name))
        if self.nats_url is not None:
            _check_nats_url(self.nats_url)
        _check_distinct(self.listening_ports())
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
    def client_url(self) -> str:
        """The NATS URL services connect to."""
        return self.nats_url if self.nats_url is not None else f"nats://{LOOPBACK}:{self.nats_port}"

    def listening_ports(self) -> dict[str, int]:
        """Ports this process will listen on, by setting name; the NATS ones only if embedded."""
        names = ["grpc_port", "http_port", "admin_port"]
        if self.embedded:
            names = ["nats_port", "nats_monitor_port", *names]
        return {name: getattr(self, name) for name in names}


def _check_port(name: str, port: int) -> None:
    # Port 0 ("any free port") is refused: the printed table and clients need the real number.
    if not 1 <= port <= 65535:
        raise ConfigError(flag_of(name), f"port must be between 1 and 65535, got {port}")


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
            raise ConfigError(flag_of(second), f"port {b} is also given to {flag_of(first)}")
