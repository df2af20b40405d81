"""Prometheus metrics, /v1/stats, and what replicas report about themselves."""
