"""The ``mesh`` command line: ``up``, ``serve``, ``gateway``, ``services``, ``call``, ``trace``,
``conformance``, ``security``, ``k8s`` and ``bench``.

Exit codes: 0 done, 1 something failed while running, 2 bad usage or configuration (including a
port that is already taken), 130 interrupted before the signal handlers were in place.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from gateway.workers import worker_count
from mesh import event_loop, gateway_command, serve, tools, trace_command
from mesh.config import ConfigError, UpConfig, flag_of
from mesh.conformance import command as conformance_command
from mesh.embedded_nats import EmbeddedNatsError, PortUnavailableError
from mesh.event_loop import EventLoopError
from mesh.k8s import command as k8s_command
from mesh.security import command as security_command
from mesh.up import NatsNotUsable, PortsTaken, TracingNotUsable, UpError, run

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# The benchmarks are not part of the installed package: ``mesh bench`` runs them from the source
# checkout this package was installed from (an editable install), as ``python -m benchmarks``.
_CHECKOUT = Path(__file__).resolve().parent.parent

Command = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, so scripts and logs stay readable."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mesh``, one subparser per subcommand; each sets ``command`` to its runner."""
    parser = _Parser(prog="mesh", description="A gRPC service mesh over NATS.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    up = subcommands.add_parser(
        "up",
        help="run the whole mesh on this machine (NATS, every service, gateway, probes) until Ctrl-C",
        description="Run an embedded NATS (unless --nats-url) and the mesh, print the endpoints, "
        "and run until SIGINT or SIGTERM.",
    )
    _add_up_arguments(up)
    serve_parser = subcommands.add_parser(
        "serve", help="host chosen targets against MESH_NATS_URL (what a Kubernetes pod runs)",
        description=serve.__doc__,
    )
    serve.add_arguments(serve_parser)
    serve_parser.set_defaults(command=serve.run, parser=serve_parser, takes_any_arguments=False)
    gateway = subcommands.add_parser(
        "gateway", help="the gRPC ingress and the Envoy edge against MESH_NATS_URL (what a gateway pod runs)",
        description=gateway_command.__doc__,
    )
    gateway_command.add_arguments(gateway)
    gateway.set_defaults(command=gateway_command.run, parser=gateway, takes_any_arguments=False)
    services = subcommands.add_parser(
        "services", help="list the targets and gRPC services running ($SRV)",
        description="List every target answering the NATS Services API ($SRV.INFO) within --wait seconds: "
        "its instances, its method count and its gRPC services (--json: the raw answers). Exit 1 when "
        "nothing answers, 2 when NATS cannot be reached.",
    )
    tools.add_services_arguments(services)
    services.set_defaults(command=tools.run_services, parser=services, takes_any_arguments=False)
    call = subcommands.add_parser(
        "call", help="call a method over NATS with a JSON body, using the target's reflection",
        description="mesh call <target> <package.Service/Method> '<json>': call any method over NATS and "
        "print the answer as JSON (a stream as one JSON line per message, as they arrive). Client and bidi "
        "streams send one JSON request per line of stdin, as each line comes. Exit 1 when the call fails "
        "(its code and rich details on stderr), 2 for a bad name or body or an unusable NATS.",
    )
    tools.add_call_arguments(call)
    call.set_defaults(command=tools.run_call, parser=call, takes_any_arguments=False)
    trace = subcommands.add_parser("trace", help="print a trace kept by 'mesh up --trace' as a waterfall",
                                   description=trace_command.__doc__)
    trace_command.add_arguments(trace)
    trace.set_defaults(command=trace_command.run, parser=trace, takes_any_arguments=False)
    conformance = subcommands.add_parser(
        "conformance", help="host the conformance service for clients in other languages (docs/conformance.md)",
        description=conformance_command.__doc__,
    )
    conformance_command.add_arguments(conformance)
    conformance.set_defaults(command=conformance_command.run, parser=conformance, takes_any_arguments=False)
    # No -h of its own: every argument, --help included, goes on to ``python -m benchmarks``.
    bench = subcommands.add_parser("bench", help="run the benchmarks (python -m benchmarks; --quick, --help)",
                                   add_help=False)
    bench.set_defaults(command=_run_bench, parser=bench, takes_any_arguments=True)
    security = subcommands.add_parser("security", help="lock the mesh down: certificates, NATS users (init)")
    security_commands = security.add_subparsers(title="commands", metavar="COMMAND", required=True)
    init = security_commands.add_parser("init", help="create the CA, certificates, identities and NATS config",
                                        description=security_command.__doc__)
    security_command.add_arguments(init)
    init.set_defaults(command=security_command.run, parser=init, takes_any_arguments=False)
    k8s = subcommands.add_parser("k8s", help="Kubernetes manifests from the service catalogue (render)")
    k8s_commands = k8s.add_subparsers(title="commands", metavar="COMMAND", required=True)
    render = k8s_commands.add_parser("render", help="write (or --check) the k8s/ tree",
                                     description="Render the Kustomize base and overlays into --out.")
    k8s_command.add_render_arguments(render)
    render.set_defaults(command=k8s_command.run_render, parser=render, takes_any_arguments=False)
    keys = k8s_commands.add_parser("service-keys", help="write secrets/service-keys.json for the auth target",
                                   description=k8s_command.run_service_keys.__doc__)
    k8s_command.add_service_keys_arguments(keys)
    keys.set_defaults(command=k8s_command.run_service_keys, parser=keys, takes_any_arguments=False)
    return parser


def _add_up_arguments(up: argparse.ArgumentParser) -> None:
    defaults = UpConfig()
    ports = {
        "nats_port": "NATS client port of the embedded server (with --cluster N: node i on PORT+i)",
        "nats_monitor_port": "NATS HTTP monitoring port of the embedded server (node i on PORT+i)",
        "nats_cluster_port": "with --cluster N > 1: route port of node 0, node i on PORT+i",
        "grpc_port": "gRPC ingress port",
        "http_port": "HTTP edge (Envoy) port",
        "admin_port": "admin server port (/livez /readyz /metrics)",
    }
    for name, help_text in ports.items():
        default = getattr(defaults, name)
        up.add_argument(
            flag_of(name), type=int, default=default, metavar="PORT", help=f"{help_text} ({default})"
        )
    up.add_argument(
        "--secure", action="store_true",
        help="mTLS and one least-privilege NATS identity per target, TLS on the ingress "
             "(runs 'mesh security init' on the data dir when its secrets are missing)",
    )
    up.add_argument(
        "--data-dir", type=Path, default=defaults.data_dir, metavar="DIR",
        help=f"where the embedded NATS keeps JetStream data and its log (./{defaults.data_dir})",
    )
    up.add_argument(
        "--nats-url", default=None, metavar="URL",
        help="use this NATS (comma-separated URLs) instead of starting an embedded one",
    )
    up.add_argument(
        "--cluster", type=int, default=defaults.cluster, metavar="N",
        help="run N embedded nats-servers (1, 3 or 5) as one JetStream cluster, stores in DIR/nats-<i>/; "
             "services use JetStream R3 on 3 or more and a node that dies is restarted (1)",
    )
    up.add_argument(
        "--ingress-workers", type=_ingress_workers, default=defaults.ingress_workers, metavar="N",
        help="processes serving the gRPC ingress's port, each with its own NATS connection; auto: one per "
             f"usable core ({defaults.ingress_workers}: this process)",
    )
    up.add_argument(
        "--trace", action="store_true",
        help="keep the spans of every call in DIR/traces (bounded) for 'mesh trace'",
    )
    up.set_defaults(command=_run_up, parser=up, takes_any_arguments=False)


def _ingress_workers(text: str) -> int:
    try:
        return worker_count(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mesh`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        # parse_known_args so ``bench`` can pass on arguments it does not know itself.
        args, extra = parser.parse_known_args(argv)
        if extra and not args.takes_any_arguments:
            args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.passed_on = extra
    except SystemExit as exit_:
        # argparse exits for --help (0) and usage errors (2); main() returns codes instead.
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    command: Command = args.command
    try:
        return command(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _run_bench(args: argparse.Namespace) -> int:
    if not (_CHECKOUT / "benchmarks" / "__main__.py").is_file():
        return _fail("bench", f"no benchmarks/ in {_CHECKOUT}: run it from a source checkout", EXIT_USAGE)
    # A child interpreter, so the benchmarks import from the checkout whatever the caller's cwd.
    return subprocess.run([sys.executable, "-m", "benchmarks", *args.passed_on], cwd=_CHECKOUT).returncode


def _run_up(args: argparse.Namespace) -> int:
    try:
        config = _up_config(args)
    except ConfigError as error:
        return _fail("up", str(error), EXIT_USAGE)
    try:
        event_loop.run(run(config, trace=args.trace))
    except PortUnavailableError as error:
        flag = flag_of({"client": "nats_port", "cluster": "nats_cluster_port"}.get(error.role, "nats_monitor_port"))
        return _fail("up", f"{flag}: cannot listen on {error.host}:{error.port}: {error.reason}", EXIT_USAGE)
    except (NatsNotUsable, PortsTaken, TracingNotUsable, EventLoopError) as error:
        return _fail("up", str(error), EXIT_USAGE)
    except (EmbeddedNatsError, UpError) as error:
        return _fail("up", str(error), EXIT_FAILED)
    return EXIT_OK


def _up_config(args: argparse.Namespace) -> UpConfig:
    return UpConfig(
        nats_port=args.nats_port,
        nats_monitor_port=args.nats_monitor_port,
        nats_cluster_port=args.nats_cluster_port,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        admin_port=args.admin_port,
        data_dir=args.data_dir,
        secure=args.secure,
        nats_url=args.nats_url,
        cluster=args.cluster,
        ingress_workers=args.ingress_workers,
    )


def _version() -> str:
    try:
        return importlib.metadata.version("nats-grpc-mesh")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _fail(command: str, message: str, code: int) -> int:
    print(f"mesh {command}: error: {message}", file=sys.stderr)
    return code
