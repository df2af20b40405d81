"""What `make run` runs, run as the Makefile has it: capserve's Prometheus series are at the
documented fixed address, and the shipped Prometheus config scrapes them through the target list
Ray itself writes, with no edit.

The command comes from `make -n run`, so this tests the Makefile's recipe, whatever it becomes;
only the config's HTTP port, the metrics port (CAPSERVE_METRICS_PORT), HAProxy's extra ports and
Ray's temp dir are moved, so the run does not meet the session's Ray or a developer's own
`make run`. It starts its own Ray and app, separate from the session's `serve_cluster`.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cluster.monitoring.prometheus_server import prometheus_server
from cluster.processes import free_port, running_server
from cluster.serve_flags import ray_env, selected_flags
from cluster.serve_run import METRICS_PORT_VARIABLE
from tests.prometheus_server import (
    POLL_S,
    RAY_SD_FILE_NAME,
    SCRAPE_WAIT_S,
    dashboard_queries,
    wait_for_total,
)

pytestmark = pytest.mark.e2e
CONFIG = "serve_config.yaml"
START_TIMEOUT_S = 900
# serve run's Ctrl-C: Serve shuts down its proxies and replicas, then Ray stops.
STOP_TIMEOUT_S = 120
CLASSIFY_REQUESTS = 4
EXPORTED = "ray_capserve_http_requests_total"
SCRAPED = 'sum(capserve_http_requests_total{endpoint="/v1/classify"})'


@dataclass(frozen=True)
class MadeRun:
    base_url: str
    metrics_port: int
    sd_file: Path
    """The file_sd list Ray's dashboard keeps, in Ray's temp dir, as the shipped config reads."""


def make_run_command(project_root: Path, config: Path) -> tuple[dict[str, str], list[str]]:
    """The variables and the command of `make run`'s recipe, on this interpreter's venv, with
    `config` in place of serve_config.yaml."""
    venv = Path(sys.prefix)
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", f"{venv}/.installed", "run", f"VENV={venv}"],
        cwd=project_root,
        capture_output=True,
        text=True,
        check=True,
    )
    [line] = dry_run.stdout.strip().splitlines()
    words = shlex.split(line)
    variables = {}
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        variables[name] = value
    assert CONFIG in words, f"make run no longer serves {CONFIG}: {line}"
    return variables, [str(config) if word == CONFIG else word for word in words]


def _is_ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def made_run_of(project_root: Path, workdir: Path, config: dict[str, Any]) -> Iterator[MadeRun]:
    """`make run` serving `config` (a parsed serve config) from `workdir`, on free ports."""
    http_port, metrics_port = free_port(), free_port()
    config = {**config, "http_options": {**config["http_options"], "port": http_port}}
    config_path = workdir / CONFIG
    config_path.write_text(yaml.safe_dump(config))
    # Short: Ray's sockets live under it, and a socket's path has at most 107 characters.
    ray_tmp = Path(tempfile.mkdtemp(prefix="capserve-ray-", dir="/tmp"))
    variables, command = make_run_command(project_root, config_path)
    env = (
        os.environ
        | ray_env(selected_flags(), free_port)
        | variables
        | {METRICS_PORT_VARIABLE: str(metrics_port), "RAY_TMPDIR": str(ray_tmp)}
    )
    base_url = f"http://127.0.0.1:{http_port}"
    # Relative paths in the config resolve against the directory Serve starts in.
    os.chdir(project_root)
    try:
        with running_server(
            command,
            workdir / "make-run.log",
            lambda: _is_ready(base_url),
            "make run",
            START_TIMEOUT_S,
            poll_s=2,
            env=env,
            stop_signal=signal.SIGINT,
            stop_timeout_s=STOP_TIMEOUT_S,
        ):
            yield MadeRun(base_url, metrics_port, ray_tmp / "ray" / RAY_SD_FILE_NAME)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def made_run(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MadeRun]:
    config = yaml.safe_load((project_root / CONFIG).read_text())
    with made_run_of(project_root, tmp_path_factory.mktemp("make-run"), config) as run:
        yield run


@pytest.fixture(scope="module")
def classified(made_run: MadeRun) -> int:
    """Classify requests sent to the app, each answered."""
    with httpx.Client(base_url=made_run.base_url, timeout=120) as client:
        for index in range(CLASSIFY_REQUESTS):
            response = client.post("/v1/classify", json={"texts": [f"where is my card {index}"]})
            assert response.status_code == 200, response.text
    return CLASSIFY_REQUESTS


def _exported_classify_requests(metrics_port: int) -> float:
    """What `curl -s 127.0.0.1:PORT/metrics | grep capserve_` shows, summed for classify."""
    exported = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    families = text_string_to_metric_families(exported)
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == EXPORTED and sample.labels.get("endpoint") == "/v1/classify"
    )


def test_capserve_series_are_at_the_fixed_address(made_run: MadeRun, classified: int) -> None:
    deadline = time.monotonic() + SCRAPE_WAIT_S
    while (exported := _exported_classify_requests(made_run.metrics_port)) < classified:
        if time.monotonic() > deadline:
            pytest.fail(f"port {made_run.metrics_port} counts {exported} classify requests")
        time.sleep(POLL_S)


def test_the_shipped_prometheus_config_scrapes_it_unchanged(
    made_run: MadeRun, classified: int
) -> None:
    target = f":{made_run.metrics_port}"
    deadline = time.monotonic() + SCRAPE_WAIT_S
    while not (made_run.sd_file.exists() and target in made_run.sd_file.read_text()):
        if time.monotonic() > deadline:
            pytest.fail(f"Ray wrote no target list naming {target} at {made_run.sd_file}")
        time.sleep(POLL_S)
    with prometheus_server(made_run.sd_file) as prometheus:
        assert wait_for_total(prometheus, SCRAPED, classified) >= classified
        for expr in dashboard_queries():
            prometheus.query(expr)
