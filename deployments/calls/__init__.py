"""Calls between deployments that always end: timeouts, accept waits, circuit breaker."""
