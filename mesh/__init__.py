"""The composition root: configuration, the host process and the ``mesh`` command line.

``mesh`` is the only layer that wires the others together (gateway, health, servicers and
nats_transport); nothing below imports it.
"""

import os

# Read by grpc when it is first imported, so set before any mesh module imports it. Every process
# mesh starts is a fresh interpreter (exec), never a fork that goes on running grpc, so grpc's
# fork handlers have nothing to do; on uvloop, which forks to spawn, they only printed a warning
# ("skipping fork() handlers") into mesh up's output.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
