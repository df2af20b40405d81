"""A real Prometheus server scraping this process's Ray: `prometheus_for_ray(workdir)`.

It runs the shipped scrape config (cluster/monitoring/prometheus.yml), file_sd included. A missing
prometheus binary fails the tests rather than skipping them, so CI cannot pass without scraping
the app for real.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cluster.monitoring.prometheus_server import (
    INSTALL_HINT,
    PrometheusClient,
    prometheus_server,
)

# The name Ray gives its file_sd list; the shipped config reads it from Ray's temp dir.
RAY_SD_FILE_NAME = "prom_metrics_service_discovery.json"


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
