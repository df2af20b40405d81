"""A real Prometheus server on 127.0.0.1 that scrapes a Ray cluster with the shipped scrape config,
and a small client of its HTTP query API.

`prometheus_server(sd_file)` runs Debian's /usr/bin/prometheus with `prometheus.yml` of this
folder, changed only in where it reads Ray's file_sd target list, on a free port with a throwaway
storage folder. The end-to-end test (tests/e2e/test_prometheus.py) and the metrics plot
(loadtests/metrics_plot.py) use it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from pydantic import BaseModel

from cluster.processes import ServerNotReady, free_port, running_server

SCRAPE_CONFIG = Path(__file__).with_name("prometheus.yml")
INSTALL_HINT = "make services"
START_TIMEOUT_S = 30.0
QUERY_TIMEOUT_S = 10.0


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or answered a query with an error."""


class InstantSample(BaseModel):
    metric: dict[str, str]
    value: tuple[float, str]


class RangeSeries(BaseModel):
    metric: dict[str, str]
    values: list[tuple[float, str]]


class _InstantData(BaseModel):
    resultType: Literal["vector"]
    result: list[InstantSample]


class _RangeData(BaseModel):
    resultType: Literal["matrix"]
    result: list[RangeSeries]


class _Answer(BaseModel):
    status: Literal["success", "error"]
    data: dict[str, Any] | None = None
    errorType: str | None = None
    error: str | None = None


class PrometheusClient:
    """Instant and range queries against one Prometheus server's HTTP API."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}{path}", params=params, timeout=QUERY_TIMEOUT_S)
        answer = _Answer.model_validate_json(response.text)
        if answer.status != "success" or answer.data is None:
            raise PrometheusError(
                f"Prometheus rejected {params.get('query')!r} (HTTP {response.status_code}, "
                f"{answer.errorType}): {answer.error}"
            )
        return answer.data

    def query(self, expr: str) -> list[InstantSample]:
        """The value of `expr` now, one sample per series."""
        return _InstantData.model_validate(self._get("/api/v1/query", {"query": expr})).result

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[RangeSeries]:
        """`expr` evaluated every `step_s` seconds from `start` to `end` (Unix seconds)."""
        params = {"query": expr, "start": str(start), "end": str(end), "step": str(step_s)}
        return _RangeData.model_validate(self._get("/api/v1/query_range", params)).result


def scrape_config(sd_file: Path) -> dict[str, Any]:
    """The shipped scrape config with every file_sd list read from `sd_file` instead."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    for job in config["scrape_configs"]:
        for discovery in job.get("file_sd_configs", []):
            discovery["files"] = [str(sd_file)]
    return config


def _is_ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def prometheus_server(sd_file: Path) -> Iterator[PrometheusClient]:
    """Runs Prometheus with the shipped config on Ray's file_sd list `sd_file` until exit.

    Raises PrometheusError when the binary is missing or the server is not ready in time.
    """
    executable = shutil.which("prometheus")
    if executable is None:
        raise PrometheusError(f"prometheus is not on PATH; install it with `{INSTALL_HINT}`")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="capserve-prometheus-") as workdir:
        config_path = Path(workdir) / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(scrape_config(sd_file)))
        log_path = Path(workdir) / "prometheus.log"
        command = [
            executable,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={Path(workdir) / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        ready = running_server(
            command,
            log_path,
            lambda: _is_ready(base_url),
            f"Prometheus on port {port}",
            START_TIMEOUT_S,
        )
        try:
            with ready:
                yield PrometheusClient(base_url)
        except ServerNotReady as error:
            raise PrometheusError(str(error)) from None
