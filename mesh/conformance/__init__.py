"""The conformance server: ``gaming.conformance.v1.ConformanceService``, which makes a server do
each thing the wire protocol describes, and ``mesh conformance``, which hosts it on a NATS URL so
that a client in any language can check itself against it (docs/conformance.md).

``service`` is the servicer (grpc.aio's API only, no NATS), ``records`` what it remembers of the
calls a client names, ``command`` the command line.
"""

from __future__ import annotations

from mesh.conformance.records import CALL_ID_KEY
from mesh.conformance.service import ERROR_DOMAIN, RETRY_DELAY_MS, SERVICE_NAME, ConformanceServicer, pattern

__all__ = ["CALL_ID_KEY", "ERROR_DOMAIN", "RETRY_DELAY_MS", "SERVICE_NAME", "ConformanceServicer", "pattern"]
