"""Unary benchmarks: grpc.aio over HTTP/2, raw nats-py request/reply, and nats_transport.

Run ``python -m benchmarks`` (or ``--quick``) from the repository root; it writes ``RESULTS.md``
and, when matplotlib is importable, its plots into a new scratch folder whose path it prints, or
into ``benchmarks/`` (the committed results) with ``--write-results``.
"""
