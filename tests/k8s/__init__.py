"""Tests of the Kubernetes manifests: rendered, validated, and run as local processes."""
