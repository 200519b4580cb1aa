"""What is measured: the transports, the calls in flight for each, and the run settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Transport:
    """One way of making the GetQuest call, and the concurrencies it is measured at."""

    key: str
    label: str
    server: str  # key of the server process it calls (servers.py's kinds)
    threads: bool  # True: N threads with sync stubs; False: N asyncio tasks
    in_flight: tuple[int, ...]
    # HTTP/2 connections the tasks are dealt over (at most one per task): a server of several
    # processes sharing a port (SO_REUSEPORT) gets whole connections from the kernel, not calls.
    connections: int = 1
    # Server and client both on uvloop (mesh/event_loop.py: what mesh's hosts use where it is
    # installed); the same code as the case named without "-uvloop".
    uvloop: bool = False

    @property
    def base(self) -> str:
        """The case this one repeats on uvloop (its own key when on asyncio's loop)."""
        return self.key.removesuffix("-uvloop")


TRANSPORTS = (
    Transport(key="grpc-sync", label="grpcio sync (HTTP/2)", server="grpc-sync", threads=True, in_flight=(1, 16)),
    Transport(key="grpc-aio", label="grpc.aio (HTTP/2)", server="grpc-aio", threads=False, in_flight=(1, 64)),
    Transport(key="raw", label="raw nats-py", server="raw", threads=False, in_flight=(1, 64, 256)),
    Transport(key="ours", label="nats_transport aio", server="ours", threads=False, in_flight=(1, 64, 256)),
    Transport(
        key="ours-sync-servicer",
        label="nats_transport aio, sync servicer",
        server="ours-sync-servicer",
        threads=False,
        in_flight=(64,),
    ),
    # The "ours" server and channel with the tracing interceptors a host installs under
    # `mesh up --trace` (benchmarks/traced.py); "ours" at 64 is the same setup with tracing off.
    Transport(
        key="ours-traced", label="nats_transport aio, tracing on", server="ours-traced", threads=False, in_flight=(64,)
    ),
    Transport(key="ours-sync", label="nats_transport sync channel", server="ours", threads=True, in_flight=(1, 16)),
    # The floor under the sync channel: raw nats-py on a loop thread, called from N threads, through
    # asyncio.run_coroutine_threadsafe (hand-written sync code) or through the channel's own handoff.
    Transport(key="raw-sync", label="raw nats-py from threads (run_coroutine_threadsafe)", server="raw",
              threads=True, in_flight=(16,)),
    Transport(key="raw-sync-inbox", label="raw nats-py from threads (the sync channel's handoff)", server="raw",
              threads=True, in_flight=(16,)),
    # grpc.aio stubs over HTTP/2 to gateway.ingress, which forwards over NATS to the "ours" server.
    Transport(
        key="ingress", label="gRPC ingress -> nats_transport", server="ingress", threads=False, in_flight=(1, 64)
    ),
    # The same through an ingress of 2 worker processes sharing its port (gateway.workers). The
    # kernel deals connections to them by a hash, so 8 connections: 2 would all land on one worker
    # half the time.
    Transport(
        key="ingress-2",
        label="gRPC ingress, 2 workers -> nats_transport",
        server="ingress-2",
        threads=False,
        in_flight=(1, 64),
        connections=8,
    ),
    # The three asyncio transports again, servers and clients on uvloop.
    Transport(key="grpc-aio-uvloop", label="grpc.aio (HTTP/2), uvloop", server="grpc-aio-uvloop", threads=False,
              in_flight=(1, 64), uvloop=True),
    Transport(key="raw-uvloop", label="raw nats-py, uvloop", server="raw-uvloop", threads=False,
              in_flight=(1, 64), uvloop=True),
    Transport(key="ours-uvloop", label="nats_transport aio, uvloop", server="ours-uvloop", threads=False,
              in_flight=(1, 64), uvloop=True),
    # HTTP/1.1 keep-alive GETs (JSON) to Envoy, which transcodes to gRPC and calls the ingress above.
    Transport(
        key="envoy", label="HTTP/JSON via Envoy -> ingress", server="edge", threads=False, in_flight=(1, 64)
    ),
)
BY_KEY = {t.key: t for t in TRANSPORTS}

# Server streaming is measured on these two (keys above).
STREAM_TRANSPORTS = ("grpc-aio", "ours")

# Profiled under load, one extra window each (not counted in the results): (transport, in flight).
PROFILED = (("ours", 64), ("ours-sync", 16), ("raw", 64), ("ingress", 64))


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoints:
    """Where the servers listen: one nats-server for the NATS kinds, a port per grpcio server;
    and where the traced server and client keep their spans."""

    nats_url: str
    grpc_aio_port: int
    grpc_aio_uvloop_port: int  # the grpc.aio server on uvloop
    grpc_sync_port: int
    ingress_port: int
    ingress_workers_port: int  # the ingress of 2 worker processes
    edge_port: int  # Envoy's HTTP listener
    trace_dir: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How long and how often each case runs."""

    name: str
    warmup: float
    duration: float
    runs: int
    stream_messages: int
    profile: bool  # profile by default
    profile_seconds: int  # the window of each profiled case (py-spy takes whole seconds)


QUICK = Settings(
    name="quick", warmup=0.5, duration=2.0, runs=1, stream_messages=20_000, profile=False, profile_seconds=2
)
FULL = Settings(
    name="full", warmup=1.0, duration=5.0, runs=3, stream_messages=100_000, profile=True, profile_seconds=10
)
