"""Batch lines against their key's budget: each line takes from the buckets of the key that
made the batch, waiting for them to refill; a line no bucket could ever hold fails alone."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from capabilities.base import BatchLine
from deployments.batch.lines import BatchLines
from deployments.config import AppConfig, parse_app_config
from deployments.http.openai_api import OpenAIEndpoints
from deployments.http.rate_limit import LocalBuckets, RateLimitConfig, RateLimiter
from deployments.http.schemas import ClassifyRequest, ClassifyResponse
from tests.fakes import FakeClock
from tests.unit.test_openai_api import FakeOpenAIEngine

CLASSIFY = "/v1/classify"
LINE = BatchLine(batch_id="batch_1", custom_id="row-1")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
LIMITED = {"requests": {"per_s": 1, "burst": 2}, "texts": {"per_s": 100, "burst": 4}}


class FakeClassify:
    def __init__(self) -> None:
        self.requests: list[ClassifyRequest] = []

    async def classify(
        self,
        request: ClassifyRequest,
        request_id: str,
        trace: str | None = None,
        batch_line: BatchLine | None = None,
    ) -> ClassifyResponse:
        self.requests.append(request)
        return ClassifyResponse(id=request_id, capability_versions={}, results=[])


@pytest.fixture
def config(project_root: Path, monkeypatch: pytest.MonkeyPatch) -> AppConfig:
    monkeypatch.chdir(project_root)
    serve_config = yaml.safe_load((project_root / "serve_config.yaml").read_text())
    args: dict[str, Any] = copy.deepcopy(serve_config["applications"][0]["args"])
    args["auth"] = {
        "api_keys": [
            {"name": "team", "sha256": "a" * 64, "scopes": ["batch"], "rate_limits": LIMITED},
            {"name": "free", "sha256": "b" * 64, "scopes": ["batch"]},
        ]
    }
    args["rate_limits"] = {"redis_url": "redis://shared:6379/0"}
    args["limits"] = {"max_chat_tokens": 64}
    return parse_app_config(args)


class Budgeted:
    """BatchLines on fakes, with a limiter whose waits move a fake clock."""

    def __init__(self, config: AppConfig, limited: bool = True) -> None:
        self.clock = FakeClock()
        self.start = self.clock.now

        async def sleep(seconds: float) -> None:
            self.clock.now += seconds

        limiter = RateLimiter(RateLimitConfig(), LocalBuckets(self.clock), sleep=sleep)
        self.classify = FakeClassify()
        self.engine = FakeOpenAIEngine()
        engines = {model.name: self.engine for model in config.models}
        self.lines = BatchLines(
            config,
            self.classify,  # type: ignore[arg-type]
            OpenAIEndpoints(config.models, engines, config.limits),
            limiter if limited else None,
        )

    @property
    def waited_s(self) -> float:
        return self.clock.now - self.start


async def test_a_keys_batch_lines_wait_for_its_requests_bucket(config: AppConfig) -> None:
    budgeted = Budgeted(config)
    for index in range(5):
        outcome = await budgeted.lines.run(
            CLASSIFY, {"texts": ["hi"]}, f"r{index}", "team", LINE, TRACEPARENT
        )
        assert outcome.status_code == 200
    # A burst of 2, then one a second: the line waits its turn, it does not fail.
    assert budgeted.waited_s == pytest.approx(3.0)
    for index in range(5):
        await budgeted.lines.run(
            CLASSIFY, {"texts": ["hi"]}, f"f{index}", "free", LINE, TRACEPARENT
        )
    assert budgeted.waited_s == pytest.approx(3.0), "a key without limits never waits"


async def test_ad_hoc_labels_count_as_texts_of_a_batch_line(config: AppConfig) -> None:
    budgeted = Budgeted(config)
    body = {"texts": ["a", "b"], "labels": ["card", "fee", "refund"]}
    outcome = await budgeted.lines.run(CLASSIFY, body, "r", "team", LINE, TRACEPARENT)
    assert outcome.status_code == 413
    message = outcome.body["error"]["message"]
    assert "5 texts in one request exceed this key's texts burst of 4" in message
    assert budgeted.classify.requests == []
    outcome = await budgeted.lines.run(
        CLASSIFY, {**body, "labels": ["card", "fee"]}, "r", "team", LINE, TRACEPARENT
    )
    assert outcome.status_code == 200


async def test_chat_lines_keep_to_the_token_cap(config: AppConfig) -> None:
    budgeted = Budgeted(config)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}
    outcome = await budgeted.lines.run("/v1/chat/completions", body, "r", "team", LINE, TRACEPARENT)
    assert outcome.status_code == 400 and "cap of 64" in outcome.body["error"]["message"]
    assert budgeted.engine.calls == []


async def test_the_operators_own_job_is_not_limited(config: AppConfig) -> None:
    """`ray job submit` jobs run without a limiter: no key made them."""
    budgeted = Budgeted(config, limited=False)
    for index in range(5):
        await budgeted.lines.run(
            CLASSIFY, {"texts": ["hi"]}, f"r{index}", "team", LINE, TRACEPARENT
        )
    assert budgeted.waited_s == 0
