"""Unary benchmarks: grpc.aio over HTTP/2, raw nats-py request/reply, and nats_transport.

Run ``python -m benchmarks`` (or ``--quick``) from the repository root; it writes
``benchmarks/RESULTS.md`` and, when matplotlib is importable, ``benchmarks/unary.png``.
"""
