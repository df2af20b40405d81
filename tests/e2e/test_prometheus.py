"""A real Prometheus, run with the shipped scrape config, scraping the running app's Ray node.

Requests go to the app in two waves, each waited for in Prometheus, so rates over the window
between them are real; then the queries of the dashboard must answer.
"""

import time
from collections.abc import Iterator

import httpx
import pytest

from cluster.monitoring.prometheus_server import PrometheusClient
from tests.prometheus_server import (
    dashboard_queries,
    prometheus_for_ray,
    total,
    wait_for,
    wait_for_total,
)

pytestmark = pytest.mark.e2e
CLASSIFY_REQUESTS_PER_WAVE = 6
EMBEDDINGS_REQUESTS_PER_WAVE = 3
CLASSIFY_REQUESTS = 'sum(capserve_http_requests_total{endpoint="/v1/classify"})'
CLASSIFY_P95 = (
    "histogram_quantile(0.95, sum by (le) (rate("
    'capserve_http_request_duration_seconds_bucket{endpoint="/v1/classify"}[1m])))'
)
ENGINE_REQUESTS = "sum by (model, method) (capserve_engine_requests_total)"


@pytest.fixture(scope="module")
def prometheus(serve_cluster, tmp_path_factory) -> Iterator[PrometheusClient]:
    with prometheus_for_ray(tmp_path_factory.mktemp("prometheus")) as client:
        yield client


def _send_wave(client: httpx.Client) -> None:
    for index in range(CLASSIFY_REQUESTS_PER_WAVE):
        texts = [f"I lost my card on bus {index} at {time.time()}"]
        response = client.post("/v1/classify", json={"texts": texts})
        assert response.status_code == 200, response.text
    for index in range(EMBEDDINGS_REQUESTS_PER_WAVE):
        body = {"model": "minilm", "input": [f"exchange rate {index}", "top up failed"]}
        response = client.post("/v1/embeddings", json=body)
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def scraped_traffic(prometheus: PrometheusClient, client: httpx.Client) -> float:
    """Two waves of requests, each seen in Prometheus; the classify count Prometheus then has."""
    for _wave in range(2):
        before = total(prometheus.query(CLASSIFY_REQUESTS))
        _send_wave(client)
        # `before` includes what earlier tests of the session sent.
        wanted = before + CLASSIFY_REQUESTS_PER_WAVE
        counted = wait_for_total(prometheus, CLASSIFY_REQUESTS, wanted)
    return counted


def test_prometheus_scrapes_every_ray_node(prometheus: PrometheusClient) -> None:
    samples = wait_for(prometheus, 'up{job="ray"}', bool)
    assert [sample.value[1] for sample in samples] == ["1"] * len(samples), samples


def test_classify_requests_are_counted(scraped_traffic: float) -> None:
    assert scraped_traffic >= 2 * CLASSIFY_REQUESTS_PER_WAVE


def test_request_latency_quantile_is_a_number(
    prometheus: PrometheusClient, scraped_traffic: float
) -> None:
    [sample] = prometheus.query(CLASSIFY_P95)
    seconds = float(sample.value[1])
    assert 0 < seconds < 60, sample


def test_engine_calls_are_counted_per_model(
    prometheus: PrometheusClient, scraped_traffic: float
) -> None:
    samples = wait_for(prometheus, ENGINE_REQUESTS, bool)
    assert {sample.metric["model"] for sample in samples} >= {"minilm"}, samples
    assert total(samples) > 0


def test_prometheus_accepts_every_dashboard_query(
    prometheus: PrometheusClient, scraped_traffic: float
) -> None:
    for expr in dashboard_queries():
        prometheus.query(expr)
