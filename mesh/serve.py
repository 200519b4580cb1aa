"""mesh serve TARGET...: host targets against MESH_NATS_URL; what a Kubernetes pod runs.

Every setting comes from a flag or, when the flag is absent, from its MESH_* environment
variable. A bad value is one line naming the setting as the user gave it, and exit code 2.
Per-service settings are MESH_<TARGET>_<NAME> (MESH_AUTH_SCRYPT_LOG2_N -> auth's scrypt_log2_n).
SIGTERM or SIGINT drains: NOT_SERVING, then in-flight calls get --grace seconds, then exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from health.call_log import configure_json_logging
from mesh import catalogue, event_loop
from mesh.config import NATS_URL_SCHEMES, ConfigError
from mesh.connection import AccessDenied, NatsAccess
from mesh.event_loop import EventLoopError
from mesh.host import Host, HostConfig
from nats_transport import ServiceConfig


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its flag, environment variable, parser and default."""

    flag: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _urls(text: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    if not urls:
        raise ValueError("no URL given")
    for url in urls:
        if url.split("://", 1)[0] not in NATS_URL_SCHEMES or "://" not in url:
            raise ValueError(f"{url!r} is not a NATS URL ({'|'.join(NATS_URL_SCHEMES)}://host:port)")
    return urls


def _port_or_off(text: str) -> int | None:
    if text.lower() in ("off", "none", "-1"):
        return None
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError("must be 0-65535, or 'off'")
    return port


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _replicas(text: str) -> int | None:
    if text.lower() == "auto":
        return None
    value = int(text)
    if value not in (1, 3, 5):
        raise ValueError("must be auto, 1, 3 or 5")
    return value


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"no such file: {text}")
    return path


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise ValueError(f"no such directory: {text}")
    return path


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _service_config(text: str) -> ServiceConfig:
    path = _existing_file(text)
    try:
        return ServiceConfig.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


def _log_level(text: str) -> str:
    if text.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be debug, info, warning or error")
    return text.upper()


SETTINGS = (
    Setting("--nats-url", "MESH_NATS_URL", _urls, ("nats://127.0.0.1:4222",), "NATS URL(s), comma-separated"),
    Setting("--admin-port", "MESH_ADMIN_PORT", _port_or_off, 8080, "admin HTTP port; 0 picks one, off disables"),
    Setting("--admin-host", "MESH_ADMIN_HOST", str, "0.0.0.0", "admin HTTP address"),
    Setting("--grace", "MESH_GRACE", _seconds, 10.0, "seconds in-flight calls get on SIGTERM"),
    Setting("--drain-pause", "MESH_DRAIN_PAUSE", _seconds, 1.0, "seconds NOT_SERVING before refusing calls"),
    Setting("--replicas", "MESH_REPLICAS", _replicas, None,
            "JetStream replicas of new buckets and streams: auto (3 when NATS is a cluster, else 1), "
            "1, 3 or 5; fewer existing replicas are scaled up"),
    Setting("--tls-ca", "MESH_TLS_CA", _existing_file, None, "CA file to verify the NATS server"),
    Setting("--tls-cert", "MESH_TLS_CERT", _existing_file, None, "client certificate (mTLS)"),
    Setting("--tls-key", "MESH_TLS_KEY", _existing_file, None, "client key (mTLS)"),
    Setting("--creds", "MESH_CREDS", _existing_file, None, "NATS .creds file"),
    Setting("--nkey-seed", "MESH_NKEY_SEED", _existing_file, None, "file holding a NATS nkey user seed"),
    Setting("--identity", "MESH_IDENTITY", _existing_dir, None,
            "an identity folder from 'mesh security init' (TLS, nkey, inbox prefix) for the whole host"),
    Setting("--secrets", "MESH_SECRETS_DIR", _existing_dir, None,
            "a folder of identity folders: each target connects as <folder>/<target>"),
    Setting("--user", "MESH_NATS_USER", str, None, "NATS user"),
    Setting("--password", "MESH_NATS_PASSWORD", str, None, "NATS password"),
    Setting("--token", "MESH_NATS_TOKEN", str, None, "NATS token"),
    Setting("--inbox-prefix", "MESH_INBOX_PREFIX", str, None, "inbox prefix (e.g. _INBOX_quest)"),
    Setting("--max-concurrent-rpcs", "MESH_MAX_CONCURRENT_RPCS", _positive_int, None, "per target"),
    Setting("--service-config", "MESH_SERVICE_CONFIG", _service_config, None,
            "gRPC service config JSON file for this host's calls to other targets (retries, hedging, timeouts)"),
    Setting("--log-level", "MESH_LOG_LEVEL", _log_level, "INFO", "debug, info, warning or error"),
)
# The settings that say how to reach NATS and who we are there; `mesh call` and `mesh services`
# take these too.
CONNECTION_SETTINGS = ("nats_url", "tls_ca", "tls_cert", "tls_key", "creds", "nkey_seed", "identity",
                       "user", "password", "token", "inbox_prefix")
_GLOBAL_ENV = frozenset(s.env for s in SETTINGS) | {"MESH_TARGETS"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``mesh serve``."""
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help="targets to host, or 'all' (default: $MESH_TARGETS)")
    for setting in SETTINGS:
        parser.add_argument(setting.flag, dest=setting.dest, default=None, help=_help(setting))


def _help(setting: Setting) -> str:
    default = setting.default
    if isinstance(default, tuple):
        default = ",".join(default)
    shown = "" if default is None else f", default: {default}"
    return f"{setting.help} (${setting.env}{shown})"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say how to reach NATS and who we are there (for the tools)."""
    for setting in SETTINGS:
        if setting.dest in CONNECTION_SETTINGS:
            parser.add_argument(setting.flag, dest=setting.dest, default=None, help=_help(setting))


def resolve_access(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> NatsAccess:
    """The NATS access of a tool, from its flags, then the environment, then defaults.

    Raises:
        ConfigError: naming the flag or variable that holds a bad value.
    """
    return access_from(_values(args, environ, CONNECTION_SETTINGS))


def _values(args: argparse.Namespace, environ: Mapping[str, str],
            only: tuple[str, ...] | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if only is not None and setting.dest not in only:
            continue
        raw, source = getattr(args, setting.dest, None), setting.flag
        if raw is None and setting.env in environ:
            raw, source = environ[setting.env], setting.env
        if raw is None:
            values[setting.dest] = setting.default
            continue
        try:
            values[setting.dest] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(source, f"{raw!r}: {exc}") from None
    return values


def resolve(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> tuple[HostConfig, str]:
    """The host configuration (and log level) from flags, then environment, then defaults.

    Raises:
        ConfigError: naming the flag or variable that holds a bad value.
    """
    values = _values(args, environ)
    targets = _targets(args.targets or [t for t in environ.get("MESH_TARGETS", "").split(",") if t])
    access = access_from(values)
    secrets = values["secrets"]
    if secrets is not None:
        for target in targets:
            try:
                access.as_identity(secrets / target)
            except ValueError as exc:
                raise ConfigError("--secrets", str(exc)) from None
    return HostConfig(
        targets=targets,
        nats=access,
        secrets_dir=secrets,
        admin_host=values["admin_host"],
        admin_port=values["admin_port"],
        grace=values["grace"],
        drain_pause=values["drain_pause"],
        replicas=values["replicas"],
        max_concurrent_rpcs=values["max_concurrent_rpcs"],
        settings=service_settings(targets, environ),
        service_config=values["service_config"],
    ), values["log_level"]


def access_from(values: Mapping[str, Any]) -> NatsAccess:
    """The NATS access given by the connection settings (flag ``dest`` -> parsed value).

    Raises:
        ConfigError: a setting is incomplete or not usable.
    """
    if values.get("tls_cert") and not values.get("tls_key"):
        raise ConfigError("--tls-key", "required with --tls-cert")
    access = NatsAccess(
        urls=values["nats_url"],
        tls_ca=values.get("tls_ca"), tls_cert=values.get("tls_cert"), tls_key=values.get("tls_key"),
        creds=values.get("creds"), nkey_seed=values.get("nkey_seed"),
        user=values.get("user"), password=values.get("password"), token=values.get("token"),
        inbox_prefix=values.get("inbox_prefix"),
    )
    if values.get("identity") is not None:
        try:
            access = access.as_identity(values["identity"])
        except ValueError as exc:
            raise ConfigError("--identity", str(exc)) from None
    return access


def _targets(names: list[str]) -> tuple[str, ...]:
    if not names:
        raise ConfigError("TARGET", "name at least one target (or 'all', or set MESH_TARGETS)")
    if names == ["all"]:
        return tuple(catalogue.built_targets())
    for name in names:
        try:
            module = catalogue.load(name)
        except catalogue.UnknownTarget as exc:
            raise ConfigError("TARGET", str(exc)) from None
        if module is None:
            raise ConfigError("TARGET", f"{name!r} has no servicer yet")
    return tuple(dict.fromkeys(names))


def service_settings(targets: tuple[str, ...], environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``MESH_<TARGET>_<NAME>`` variables, per target (``-`` in a target name becomes ``_``)."""
    settings: dict[str, dict[str, str]] = {}
    for target in targets:
        prefix = "MESH_" + target.upper().replace("-", "_") + "_"
        for key, value in environ.items():
            if key.startswith(prefix) and key not in _GLOBAL_ENV:
                settings.setdefault(target, {})[key[len(prefix):].lower()] = value
    return settings


async def serve(config: HostConfig) -> None:
    """Run a host until SIGINT or SIGTERM, then drain it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    host = Host(config)
    starting = asyncio.ensure_future(host.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        # A signal must end the process at any moment, even while NATS is still being reached.
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            print(f"mesh serve: {', '.join(config.targets)} on {', '.join(config.nats.urls)}"
                  f"; admin port {host.admin_port}; {event_loop.running()} event loop", flush=True)
            await stopping
    finally:
        for task in (starting, stopping):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await host.drain()
        print("mesh serve: stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    """The ``mesh serve`` command: 0 after a clean drain, 2 on a bad setting."""
    try:
        config, level = resolve(args)
    except ConfigError as error:
        print(f"mesh serve: error: {error}", flush=True, file=sys.stderr)
        return 2
    configure_json_logging(level)
    try:
        event_loop.run(serve(config))
    except (AccessDenied, ConfigError, EventLoopError) as error:
        print(f"mesh serve: error: {error}", flush=True, file=sys.stderr)
        return 2
    return 0
