"""Ray Serve's high-throughput modes, switched in one place for every way capserve starts Ray.

`CAPSERVE_SERVE_FLAGS` names the modes to turn on, comma-separated: `haproxy`
(RAY_SERVE_ENABLE_HA_PROXY: HAProxy takes the Python proxy's place and forwards HTTP to the
ingress replicas' own servers) and `throughput` (RAY_SERVE_THROUGHPUT_OPTIMIZED: gRPC between
replicas, direct ingress, a frozen GC and more). Unset, it is `DEFAULT_FLAGS`.

Ray reads its flags once, when the controller, proxies and replicas import Serve, from the
environment of the process that starts Ray (`serve run`, `ray start`, the e2e driver), so they
must be set there before Ray starts; a running cluster never sees a change. `capserve serve`
(what `make run` runs) starts `serve run` with them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

SWITCH = "CAPSERVE_SERVE_FLAGS"
# The default of every launcher (make run, the local cluster, the e2e suite); the KubeRay
# manifests spell it out as env on their containers (a unit test keeps them equal).
DEFAULT_FLAGS = "haproxy,throughput"
RAY_FLAGS: dict[str, str] = {
    "haproxy": "RAY_SERVE_ENABLE_HA_PROXY",
    "throughput": "RAY_SERVE_THROUGHPUT_OPTIMIZED",
}
# Ports HAProxy mode binds besides the HTTP port, fixed by default: the head's fallback Python
# proxy, HAProxy's Prometheus exporter and its stats page. Two Rays on one machine (tests, the
# local cluster next to another run) need their own.
HAPROXY_PORT_VARIABLES = (
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_HAPROXY_STATS_PORT",
)


def parse_flags(value: str) -> frozenset[str]:
    """The modes `value` names; a typo fails rather than silently serving the other way."""
    flags = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = sorted(flags - RAY_FLAGS.keys())
    if unknown:
        raise ValueError(f"{SWITCH}: unknown {unknown}; choose from {sorted(RAY_FLAGS)}")
    return flags


def selected_flags(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    return parse_flags(environ.get(SWITCH, DEFAULT_FLAGS))


def ray_env(flags: frozenset[str], free_port: Callable[[], int] | None = None) -> dict[str, str]:
    """Ray's variables for `flags`, each set to "1" or "0" so that none inherited from the shell
    decides instead; with `free_port`, HAProxy mode's extra ports are free ones."""
    env = {variable: str(int(flag in flags)) for flag, variable in RAY_FLAGS.items()}
    if free_port is not None and "haproxy" in flags:
        env |= {variable: str(free_port()) for variable in HAPROXY_PORT_VARIABLES}
    return env
