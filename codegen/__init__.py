"""Regenerates the Python code and descriptor set from ``protos/``; see ``generate.py``."""
