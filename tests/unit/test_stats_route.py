"""GET /v1/stats through the ingress's own route table (built without Ray): the snapshot comes
from the stats recorder within timeouts, and a recorder that hangs is a 503, never a hang."""

import copy
from pathlib import Path
from typing import Any

import yaml
from starlette.testclient import TestClient

from deployments.config import CallGuardConfig, parse_app_config
from deployments.http.ingress import Ingress
from deployments.telemetry import stats
from deployments.telemetry.stats import LatencyWindow, StatsSnapshot
from tests.unit.test_guarded_handle import FakeHandle, hanging


def stats_client(project_root: Path, tmp_path: Path, recorder: FakeHandle) -> TestClient:
    config = yaml.safe_load((project_root / "serve_config.yaml").read_text())
    args = copy.deepcopy(config["applications"][0]["args"])
    args["cache_dir"] = str(tmp_path)
    ingress_class = Ingress.func_or_class.__bases__[0]
    ingress = ingress_class(parse_app_config(args), {}, {}, recorder, None)
    return TestClient(ingress.__serve_build_asgi_app__())


def test_the_snapshot_comes_from_the_recorder(project_root, tmp_path):
    snapshot = StatsSnapshot(
        since=1,
        capabilities={},
        latency=LatencyWindow().summary(),
        replicas=[],
        nodes=[],
        engines={},
    )

    async def answer(*args: Any) -> StatsSnapshot:
        return snapshot

    recorder = FakeHandle(answer)
    response = stats_client(project_root, tmp_path, recorder).get("/v1/stats")

    assert response.status_code == 200
    assert response.json() == snapshot.model_dump(mode="json")
    assert recorder.calls == ["snapshot"]


def test_a_hung_recorder_answers_503_with_retry_after(project_root, tmp_path, monkeypatch):
    monkeypatch.setattr(stats, "STATS_CALLS", CallGuardConfig(timeout_s=0.2, accept_timeout_s=1))
    recorder = FakeHandle(hanging)

    response = stats_client(project_root, tmp_path, recorder).get("/v1/stats")

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert "the stats recorder did not answer within 0.2 s" in error["message"]
    assert recorder.responses[0].cancelled
