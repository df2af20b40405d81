"""Request priority end to end over fakes: what a request or key asks for, how coalesced calls of
different priorities run, and that every engine call carries its request's priority; batch lines
run at the lowest."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError
from ray import serve

from batchjobs.executor import LineOutcome
from capabilities.base import BatchLine, RunContext
from capabilities.batching import RunCall, run_batch
from capabilities.cache import CacheConfig
from capabilities.priority import (
    PRIORITIES,
    current_priority,
    engine_priority,
    serving_at,
)
from deployments.batch.lines import BatchLines, line_priority
from deployments.coalescing import PriorityBatches
from deployments.config import BatchingConfig, parse_app_config
from deployments.dag.capability_clients import configure_inline
from deployments.dag.classify_service import ClassifyWiring
from deployments.engine.deployment import per_call
from deployments.http.auth import ANONYMOUS, ApiKey, Authenticator, key_hash
from deployments.http.errors import BadRequestError, PermissionDeniedError, api_error_for
from deployments.http.openai_api import OpenAIEndpoints
from deployments.http.schemas import ClassifyRequest
from tests.fakes import FakeEngine
from tests.unit.test_batch_lines import TRACEPARENT
from tests.unit.test_config import default_args  # noqa: F401 - fixture
from tests.unit.test_dag import Echo, Upper
from tests.unit.test_guarded_handle import FakeResponse

KEY = "sk-capserve-priority"


def test_vllm_serves_lower_numbers_first_so_high_is_lowest():
    assert PRIORITIES == ("high", "normal", "low")
    assert engine_priority("high") < engine_priority("normal") < engine_priority("low")


async def test_serving_at_sets_the_priority_of_this_task_and_tasks_it_starts():
    assert current_priority() == "normal"
    with serving_at("high"):
        assert current_priority() == "high"
        assert await asyncio.create_task(_priority_in_a_task()) == "high"
    assert current_priority() == "normal"


async def _priority_in_a_task() -> str:
    return current_priority()


class PriorityUpper(Upper):
    """Records the priority each run's engine work would carry."""

    def __init__(self) -> None:
        super().__init__()
        self.priorities: list[str] = []

    async def run(self, texts: Sequence[str], context: RunContext) -> list[Echo]:
        self.priorities.append(current_priority())
        return await super().run(texts, context)


async def test_coalesced_calls_run_once_per_priority_each_at_its_own():
    capability = PriorityUpper()
    calls = [
        RunCall(texts=["a"], priority="low"),
        RunCall(texts=["b"], priority="high"),
        RunCall(texts=["c"], priority="low"),
        RunCall(texts=["d"]),
    ]
    replies, report = await run_batch(capability, calls)
    assert [reply.outputs for reply in replies] == [
        [Echo(value=text)] for text in ("A", "B", "C", "D")
    ]
    runs = dict(zip(capability.priorities, capability.runs, strict=True))
    assert runs == {"low": ["a", "c"], "high": ["b"], "normal": ["d"]}
    assert report.runs == 3


async def test_a_result_computed_at_one_priority_is_cached_for_all():
    capability = PriorityUpper()
    cache = CacheConfig().build()
    await run_batch(capability, [RunCall(texts=["a"], priority="low")], cache)
    replies, report = await run_batch(capability, [RunCall(texts=["a"], priority="high")], cache)
    assert replies[0].outputs == [Echo(value="A")]
    assert (report.cache_hits, report.runs, capability.runs) == (1, 0, [["a"]])


async def test_an_engine_batch_gives_each_call_its_own_priority():
    async def embed(texts: list[str], priority: str) -> list[str]:
        return [f"{text}@{priority}" for text in texts]

    outcomes = await per_call(embed, [["a"], ["b", "c"]], ["high", "low"])
    assert outcomes == [["a@high"], ["b@low", "c@low"]]


class Replica:
    """What `@serve.batch` asks of the replica it runs in."""

    _deployment_config = SimpleNamespace(max_ongoing_requests=1000)


async def test_calls_coalesce_only_with_calls_of_their_priority(monkeypatch):
    monkeypatch.setattr(serve, "get_replica_context", Replica)
    held = asyncio.Event()
    batches_run: list[list[str]] = []

    async def run(calls: list[str]) -> list[str]:
        batches_run.append(calls)
        if any(call.startswith("low") for call in calls):
            await held.wait()  # batch lines the engine holds back
        return [call.upper() for call in calls]

    batching = BatchingConfig(max_batch_size=8, batch_wait_timeout_s=0.01)
    batches = PriorityBatches(run, batching, max_concurrent_batches=1)
    low = asyncio.gather(*(batches.submit("low", f"low-{n}") for n in range(3)))
    await asyncio.sleep(0.05)
    # The low batch fills its queue's only slot; the high call has a queue of its own.
    assert await asyncio.wait_for(batches.submit("high", "high-0"), 5) == "HIGH-0"
    assert not low.done()
    held.set()
    assert await low == ["LOW-0", "LOW-1", "LOW-2"]
    assert batches_run == [["low-0", "low-1", "low-2"], ["high-0"]]


# --- keys and requests -------------------------------------------------------------------------


def principal(**priorities: str):
    key = ApiKey(name="team-a", sha256=key_hash(KEY), scopes=["classify"], **priorities)
    return Authenticator([key]).authenticate(f"Bearer {KEY}", "classify")


def test_a_request_runs_at_its_priority_or_its_keys_default():
    assert ANONYMOUS.priority_for(None) == "normal"
    assert ANONYMOUS.priority_for("high") == "high"
    paying = principal(priority="high")
    assert paying.priority_for(None) == "high"
    assert paying.priority_for("low") == "low"


def test_a_key_may_cap_the_priority_its_requests_ask_for():
    free = principal(max_priority="normal")
    assert free.priority_for(None) == "normal"
    with pytest.raises(PermissionDeniedError) as raised:
        free.priority_for("high")
    assert raised.value.status_code == 403 and raised.value.param == "priority"
    assert "up to 'normal'" in raised.value.message and "team-a" in raised.value.message


def test_a_keys_default_priority_cannot_exceed_its_cap():
    with pytest.raises(ValidationError, match="above max_priority"):
        ApiKey(
            name="a",
            sha256=key_hash(KEY),
            scopes=["classify"],
            priority="high",
            max_priority="normal",
        )


@pytest.mark.parametrize("value", ["urgent", 0, "HIGH", None])
def test_an_invalid_priority_is_a_validation_error_naming_the_choices(value: Any):
    if value is None:
        assert ClassifyRequest.model_validate({"texts": ["a"], "priority": None}).priority is None
        return
    with pytest.raises(ValidationError) as raised:
        ClassifyRequest.model_validate({"texts": ["a"], "priority": value})
    error = api_error_for(raised.value, "test")
    assert error.status_code == 422 and error.param == "priority"
    assert "'high', 'normal' or 'low'" in error.message


def test_batch_lines_run_low_and_may_not_ask_for_more():
    assert line_priority(None) == line_priority("low") == "low"
    with pytest.raises(BadRequestError, match="batch lines run at priority 'low'"):
        line_priority("high")


# --- through the classify service --------------------------------------------------------------


class EngineHandle:
    """An engine deployment's handle over the fake engine: records each call's method and the
    priority it carries (the last argument of every call)."""

    def __init__(self) -> None:
        self.engine = FakeEngine("minilm")
        self.calls: list[tuple[str, str]] = []

    def options(self, *, stream: bool) -> EngineHandle:
        return self

    @property
    def guarded_call(self) -> EngineHandle:
        return self

    def remote(self, method: str, *args: Any) -> FakeResponse:
        *arguments, priority = args
        self.calls.append((method, priority))
        return FakeResponse(lambda: getattr(self.engine, method)(*arguments), None)


@pytest.fixture
def small_app(default_args, tmp_path: Path) -> dict:  # noqa: F811
    examples = tmp_path / "examples.csv"
    with examples.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        for label in ("card_arrival", "top_up_failed", "exchange_rate"):
            writer.writerows([[f"{label.replace('_', ' ')} {n}", label] for n in range(3)])
    classification = default_args["capabilities"][0]["settings"]
    classification["examples"]["path"] = str(examples)
    classification["k"] = 3
    # Three labels of their own: no Banking77 tree over them, and a kNN vote is enough here.
    classification.pop("label_tree", None)
    classification["strategy"] = "knn"
    default_args["cache"] = {"enabled": False}
    default_args["cache_dir"] = str(tmp_path / "cache")
    return default_args


async def wired(args: dict) -> tuple[Any, EngineHandle]:
    config = parse_app_config(args)
    engine = EngineHandle()
    stats = SimpleNamespace(record=SimpleNamespace(remote=lambda *arguments: None))
    wiring = ClassifyWiring.of(config, {"minilm": engine}, {}, stats, None)  # type: ignore[arg-type]
    await configure_inline(wiring.inline, {}, "test")
    engine.calls.clear()
    return wiring, engine


async def test_every_engine_call_of_a_request_carries_its_priority(small_app):
    wiring, engine = await wired(small_app)
    body = ClassifyRequest.model_validate(
        {
            "texts": ["my card has not arrived"],
            "capabilities": ["classification", "recommendations", "gates"],
        }
    )
    response = await wiring.service.classify(body, "req-1", "high")
    assert response.priority == "high"
    assert engine.calls and {priority for _, priority in engine.calls} == {"high"}


async def test_batch_lines_reach_the_engine_at_low_priority(small_app):
    wiring, engine = await wired(small_app)
    config = parse_app_config(small_app)
    endpoints = OpenAIEndpoints(config.models, wiring.engines, config.limits)
    lines = BatchLines(config, wiring.service, endpoints, None)
    line = BatchLine(batch_id="batch_1", custom_id="row-1")

    async def run(body: dict[str, Any], request_id: str) -> LineOutcome:
        return await lines.run("/v1/classify", body, request_id, None, line, TRACEPARENT)

    outcome = await run({"texts": ["top up failed again"]}, "line-1")
    assert outcome.status_code == 200 and outcome.body["priority"] == "low"
    assert engine.calls and {priority for _, priority in engine.calls} == {"low"}
    refused = await run({"texts": ["top up failed"], "priority": "high"}, "line-2")
    assert refused.status_code == 400
    assert "batch lines run at priority 'low'" in refused.body["error"]["message"]
