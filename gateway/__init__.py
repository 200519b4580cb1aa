"""The edge: the gRPC ingress bridge (HTTP/2 -> NATS) and the Envoy xDS control plane."""
