"""`EngineDeployment` without Ray: the plain class under `@serve.deployment`, serving the fake
engine it is given as `engine_cls` (as Ray Serve LLM's `LLMServer(engine_cls=...)`), reached
through the engine client as capabilities reach it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest

from capabilities.errors import InvalidRequestError
from capabilities.priority import DEFAULT_PRIORITY, Priority
from deployments.config import CallGuardConfig, ModelConfig
from deployments.engine import deployment as engine_deployment
from deployments.engine.calls import ChatCall, ChatMessage, ChatOutput
from deployments.engine.client import EngineClient
from deployments.engine.deployment import EngineDeployment
from deployments.engine.vllm_engine import VLLMEngine
from tests.fakes import FakeEngine, serving
from tests.local_serve import ReplicaHandle, replica, serve_replicas, shut_down  # noqa: F401

CALLS = CallGuardConfig(timeout_s=5, accept_timeout_s=5)
TOO_LONG = "too long"


def model(runner: str = "pooling", max_batch_size: int = 8) -> ModelConfig:
    return ModelConfig(
        name="fake",
        model="fake/model",
        runner=runner,  # type: ignore[arg-type]
        batching={"max_batch_size": max_batch_size, "batch_wait_timeout_s": 0.05},
    )


class PickyEngine(FakeEngine):
    """Refuses a text the model could not take, as vLLM refuses a prompt over its context."""

    async def embed(
        self, texts: Sequence[str], priority: Priority = DEFAULT_PRIORITY
    ) -> np.ndarray:
        if TOO_LONG in texts:
            raise InvalidRequestError("the prompt is longer than the model's context", "texts")
        return await super().embed(texts, priority)


@pytest.fixture
async def served(serve_replicas: None) -> AsyncIterator[Any]:  # noqa: F811
    """Builds replicas of the deployment class over a given engine; shuts them down after."""
    built: list[Any] = []

    async def build(engine: FakeEngine, config: ModelConfig | None = None) -> Any:
        instance = await replica(
            EngineDeployment.func_or_class,
            config or model(),
            ReplicaHandle(),
            engine_cls=serving(engine),
        )
        built.append(instance)
        return instance

    yield build
    for instance in built:
        await shut_down(instance)


def client_of(instance: Any) -> EngineClient:
    return EngineClient("fake", "fake@test", ReplicaHandle(instance), CALLS)  # type: ignore[arg-type]


def test_the_deployment_builds_vllms_engine_unless_given_another():
    parameters = inspect.signature(EngineDeployment.func_or_class.__init__).parameters
    assert parameters["engine_cls"].default is VLLMEngine
    assert parameters["engine_cls"].kind is inspect.Parameter.KEYWORD_ONLY


async def test_the_replica_serves_the_engine_it_is_given(served):
    engine = FakeEngine()
    client = client_of(await served(engine))

    vectors = await client.embed(["card arrived", "top up failed"])

    assert engine.embedded == ["card arrived", "top up failed"]
    np.testing.assert_allclose(vectors, await FakeEngine().embed(["card arrived", "top up failed"]))
    [choice] = await client.choose(["Text: my card arrived"], ["card_arrival", "top_up"])
    assert choice.choice == "card_arrival"
    reply = await client.chat(ChatCall(messages=[ChatMessage(role="user", content="hello there")]))
    assert reply == ChatOutput(
        text="hello there", finish_reason="stop", prompt_tokens=2, completion_tokens=2
    )
    embeddings = await client.embeddings(["one two three"])
    assert embeddings.prompt_tokens == [3]


async def test_concurrent_callers_share_one_engine_batch(served, monkeypatch):
    batches: list[tuple[float, dict[str, str]]] = []
    monkeypatch.setattr(
        engine_deployment.metrics,
        "observe",
        lambda metric, value, tags: batches.append((value, tags)),
    )
    client = client_of(await served(FakeEngine()))

    await asyncio.gather(*(client.embeddings([f"text {i}"]) for i in range(5)))

    assert batches == [(5, {"model": "fake", "method": "embeddings"})]


async def test_one_callers_refused_input_fails_that_caller_alone(served):
    client = client_of(await served(PickyEngine(), model(max_batch_size=8)))

    outcomes = await asyncio.gather(
        client.embeddings(["fine"]),
        client.embeddings([TOO_LONG]),
        client.embeddings(["also"]),
        return_exceptions=True,
    )

    assert [type(outcome).__name__ for outcome in outcomes] == [
        "Embeddings",
        "InvalidRequestError",
        "Embeddings",
    ]
    # The callee's typed error arrives as itself, param and all, not as Ray's wrapper.
    assert outcomes[1].param == "texts"


async def test_ready_is_the_engines_own_answer_to_a_real_request(served):
    # What a real request is depends on what the model serves: the engine knows
    # (VLLMEngine.ready asks vLLM for its tasks; the integration tests run it).
    engine = FakeEngine()
    instance = await served(engine)

    await client_of(instance).ready()

    assert engine.readied == 1


async def test_an_engine_that_cannot_answer_fails_the_health_check(served):
    engine = FakeEngine()
    instance = await served(engine)
    await instance.check_health()

    engine.healthy = False

    with pytest.raises(RuntimeError, match="engine 'fake' is down"):
        await instance.check_health()
