"""grpc.health.v1 wiring and the HTTP admin server on :8080 (/livez, /readyz, /metrics)."""
