"""``python -m gateway ingress``: the gRPC ingress on its own, in front of a mesh on NATS, with
plain NATS access (no credentials), no Envoy and no probes: for trying the ingress by hand. A
gateway pod runs ``mesh gateway`` (NATS identity and TLS, Envoy, /livez /readyz /metrics);
``mesh up`` runs the same ingress in-process.

``--workers N`` (or ``auto``, one per usable core) serves the port from N worker processes
(``gateway.workers``); this process then supervises them, restarting one that dies.

SIGTERM or SIGINT: health NOT_SERVING, in-flight calls get ``--grace`` seconds, then exit 0.
Exit codes: 0 stopped, 1 NATS unreachable, the port cannot be bound or a worker keeps dying,
2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import nats

from gateway.ingress import Ingress, IngressOptions, TlsFiles, run_ingress
from gateway.workers import IngressWorkerError, IngressWorkers, PlainNats, run_workers, worker_count

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ingress = commands.add_parser("ingress", help="serve the gRPC ingress (HTTP/2) in front of the mesh")
    ingress.add_argument("--nats-url", default=os.environ.get("MESH_NATS_URL", DEFAULT_NATS_URL),
                         help="NATS server(s), comma-separated (default: $MESH_NATS_URL or %(default)s)")
    ingress.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    ingress.add_argument("--port", type=int, default=50051, help="port to listen on (default: %(default)s)")
    ingress.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate chain (PEM)")
    ingress.add_argument("--tls-key", type=Path, help="... and this private key (PEM)")
    ingress.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA")
    ingress.add_argument("--poll-interval", type=float, default=1.5, help="seconds between $SRV polls")
    ingress.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get on SIGTERM")
    ingress.add_argument("--workers", type=_workers, default=1, metavar="N",
                         help="processes sharing the port (SO_REUSEPORT), or auto: one per usable core "
                              "(default: %(default)s, this process alone)")
    return parser


def _workers(text: str) -> int:
    try:
        return worker_count(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    tls = TlsFiles(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca) if args.tls_cert else None
    options = IngressOptions(poll_interval=args.poll_interval, grace=args.grace, tls=tls, workers=args.workers)
    servers = [url.strip() for url in args.nats_url.split(",") if url.strip()]
    try:
        nc = await nats.connect(servers, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    except Exception as error:
        print(f"gateway ingress: error: cannot connect to NATS at {args.nats_url}: {error}", file=sys.stderr)
        return 1
    try:
        ingress: Ingress | IngressWorkers
        try:
            if options.workers > 1:
                ingress = await run_workers(nc, args.host, args.port, PlainNats(tuple(servers), log_level="INFO"),
                                            options)
            else:
                ingress = await run_ingress(nc, args.host, args.port, options=options)
        except IngressWorkerError as error:
            print(f"gateway ingress: error: {error}", file=sys.stderr)
            return 1
        except RuntimeError as error:
            print(f"gateway ingress: error: --port: {error}", file=sys.stderr)
            return 1
        print(f"gateway ingress: listening on {ingress.address}{_workers_of(ingress)}", flush=True)
        failed = await _until_stopped(stop, ingress)
        await ingress.stop()
    finally:
        await nc.drain()
    if failed is not None:
        print(f"gateway ingress: error: {failed}", file=sys.stderr, flush=True)
        return 1
    print("gateway ingress: stopped", flush=True)
    return 0


def _workers_of(ingress: Ingress | IngressWorkers) -> str:
    if isinstance(ingress, IngressWorkers):
        return f" ({len(ingress.pids)} workers, pids {', '.join(map(str, ingress.pids))})"
    return ""


async def _until_stopped(stop: asyncio.Event, ingress: Ingress | IngressWorkers) -> str | None:
    """Wait for a signal, or for the workers' supervisor to give up on one; what failed, if so."""
    if not isinstance(ingress, IngressWorkers):
        await stop.wait()
        return None
    stopped = asyncio.ensure_future(stop.wait())
    failed = asyncio.ensure_future(ingress.failed.wait())
    await asyncio.wait((stopped, failed), return_when=asyncio.FIRST_COMPLETED)
    for task in (stopped, failed):
        task.cancel()
    return None if stop.is_set() else ingress.problem


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.tls_cert is not None and args.tls_key is None:
        build_parser().error("--tls-cert needs --tls-key")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
