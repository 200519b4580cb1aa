"""Chaos tests: replicas killed and hung, NATS restarted, and slow consumers, under load."""
