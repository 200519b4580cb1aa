"""The composition root: configuration, the host process and the ``mesh`` command line.

``mesh`` is the only layer that wires the others together (gateway, health, servicers and
nats_transport); nothing below imports it.
"""
