"""A real Prometheus server scraping this process's Ray: `prometheus_for_ray(workdir)`; waiting
for what it scrapes, and the queries of the shipped Grafana dashboard.

It runs the shipped scrape config (cluster/monitoring/prometheus.yml), file_sd included. A missing
prometheus binary fails the tests rather than skipping them, so CI cannot pass without scraping
the app for real.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cluster.monitoring.prometheus_server import (
    INSTALL_HINT,
    SCRAPE_CONFIG,
    InstantSample,
    PrometheusClient,
    prometheus_server,
)

# The name Ray gives its file_sd list; the shipped config reads it from Ray's temp dir.
RAY_SD_FILE_NAME = "prom_metrics_service_discovery.json"
DASHBOARD = SCRAPE_CONFIG.with_name("grafana-dashboard.json")
# Grafana fills these in before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}
# Ray exports every 10 s and Prometheus scrapes every 5 s; replicas may be slow to report on a
# busy machine.
SCRAPE_WAIT_S = 90
POLL_S = 2


def ray_targets() -> list[dict[str, Any]]:
    """The file_sd list of every live Ray node's metrics export address, as Ray writes it.

    Ray's dashboard writes that file, and the test Ray runs without the dashboard, so the test
    writes the same content from `ray.nodes()`.
    """
    import ray

    targets = [
        f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}"
        for node in ray.nodes()
        if node["Alive"]
    ]
    return [{"labels": {"job": "ray"}, "targets": targets}]


@contextmanager
def prometheus_for_ray(workdir: Path) -> Iterator[PrometheusClient]:
    """Prometheus scraping every node of the Ray this process is connected to, until exit."""
    if shutil.which("prometheus") is None:
        pytest.fail(f"prometheus is not on PATH; install it with `{INSTALL_HINT}`", pytrace=False)
    sd_file = workdir / RAY_SD_FILE_NAME
    sd_file.write_text(json.dumps(ray_targets()))
    with prometheus_server(sd_file) as client:
        yield client


def wait_for(
    prometheus: PrometheusClient, expr: str, done: Callable[[list[InstantSample]], bool]
) -> list[InstantSample]:
    """The answer to `expr` once `done` accepts it; fails the test after `SCRAPE_WAIT_S`."""
    deadline = time.monotonic() + SCRAPE_WAIT_S
    while not done(samples := prometheus.query(expr)):
        if time.monotonic() > deadline:
            pytest.fail(f"after {SCRAPE_WAIT_S} s Prometheus answers {expr} with {samples}")
        time.sleep(POLL_S)
    return samples


def total(samples: list[InstantSample]) -> float:
    return sum(float(sample.value[1]) for sample in samples)


def wait_for_total(prometheus: PrometheusClient, expr: str, at_least: float) -> float:
    return total(wait_for(prometheus, expr, lambda samples: total(samples) >= at_least))


def dashboard_queries() -> list[str]:
    """Every query of the shipped dashboard, as Grafana sends it to Prometheus."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append(expr)
    return queries
