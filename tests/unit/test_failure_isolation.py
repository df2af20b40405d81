"""One caller's failure answers that caller only, at every layer where calls are coalesced: the
engine's batches, a capability's run, the classify service's coalescing and a runner crossing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from ray.exceptions import ActorDiedError

from capabilities.base import RunContext
from capabilities.batching import RunCall, RunReply, run_batch
from capabilities.errors import EngineUnavailableError, InvalidRequestError
from deployments.config import CallGuardConfig
from deployments.dag.capability_clients import answer_of
from deployments.dag.classify_service import run_per_capability
from deployments.dag.runner_client import RunnerClient
from deployments.engine.deployment import per_call
from deployments.http.errors import ServiceUnavailableError
from tests.unit.test_dag import Echo, Upper
from tests.unit.test_guarded_handle import FakeHandle, raising

POISON = "poison"


class Picky(Upper):
    """Fails a whole run when any of its texts is the poison (as an engine refuses a batch with
    one over-long prompt), or when told that its engine is down."""

    async def run(self, texts: Sequence[str], context: RunContext) -> list[Echo]:
        self.runs.append(list(texts))
        if "engine down" in texts:
            raise EngineUnavailableError("engine 'minilm' is down", 3.0)
        if POISON in texts:
            raise InvalidRequestError("the prompt is longer than the model's context", "texts")
        return [Echo(value=text.upper()) for text in texts]


async def test_an_engine_batch_answers_each_call_with_its_own_outcome():
    async def embed(texts: list[str]) -> list[str]:
        if POISON in texts:
            raise ValueError("undecodable output")
        return [text.upper() for text in texts]

    outcomes = await per_call(embed, [["a"], [POISON, "b"], ["c", "d"]])
    assert outcomes[0] == ["A"] and outcomes[2] == ["C", "D"]
    assert isinstance(outcomes[1], ValueError)


async def test_an_engine_batch_cancelled_as_a_whole_is_not_an_outcome():
    async def cancelled(texts: list[str]) -> list[str]:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await per_call(cancelled, [["a"]])


async def test_one_callers_input_that_fails_a_shared_run_fails_only_that_caller():
    picky = Picky()
    calls = [RunCall(texts=["a", "b"]), RunCall(texts=[POISON]), RunCall(texts=["c"])]
    replies, report = await run_batch(picky, calls)
    assert [reply.outputs for reply in (replies[0], replies[2])] == [
        [Echo(value="A"), Echo(value="B")],
        [Echo(value="C")],
    ]
    assert replies[1].failure is not None and replies[1].failure.kind == "invalid_request"
    assert "longer than the model's context" in replies[1].failure.message
    # The shared run, then each caller alone.
    assert picky.runs == [["a", "b", POISON, "c"], ["a", "b"], [POISON], ["c"]]
    assert report.calls == 3


async def test_an_unavailable_engine_is_not_retried_per_caller():
    picky = Picky()
    calls = [RunCall(texts=["engine down"]), RunCall(texts=["x"])]
    replies, _ = await run_batch(picky, calls)
    assert all(
        reply.failure is not None and reply.failure.kind == "unavailable" for reply in replies
    )
    assert len(picky.runs) == 1


class Client:
    """A capability client whose whole coalesced run fails, or answers each call."""

    def __init__(self, name: str, fails: bool) -> None:
        self.name = name
        self.fails = fails
        self.batches: list[int] = []

    async def run_many(self, calls: Sequence[RunCall]) -> list[RunReply | Exception]:
        self.batches.append(len(calls))
        if self.fails:
            raise ServiceUnavailableError(f"capability {self.name!r} is down", 2.0)
        return [RunReply(outputs=call.texts, version="v1") for call in calls]

    async def describe(self) -> Any:
        raise NotImplementedError


async def test_a_capability_failing_at_the_ingress_fails_only_its_calls():
    clients = {"classification": Client("classification", False), "gates": Client("gates", True)}
    names = ["classification", "gates", "classification", "gates"]
    calls = [RunCall(texts=[f"t{index}"]) for index in range(4)]
    outcomes = await run_per_capability(clients, names, calls)  # type: ignore[arg-type]
    assert answer_of("classification", outcomes[0]).outputs == ["t0"]
    assert answer_of("classification", outcomes[2]).outputs == ["t2"]
    for outcome in (outcomes[1], outcomes[3]):
        with pytest.raises(ServiceUnavailableError):
            answer_of("gates", outcome)
    assert clients["classification"].batches == [2] and clients["gates"].batches == [1 + 1]


async def test_a_runner_answers_each_call_of_a_crossing_on_its_own():
    picky = Picky()

    async def runner(calls: list[RunCall]) -> list[RunReply]:
        replies, _ = await run_batch(picky, calls)
        return replies

    client = RunnerClient("classification", FakeHandle(runner))  # type: ignore[arg-type]
    replies = await client.run_many([RunCall(texts=["a"]), RunCall(texts=[POISON])])
    assert answer_of("classification", replies[0]).outputs == [Echo(value="A")]
    with pytest.raises(InvalidRequestError):
        answer_of("classification", replies[1])


async def test_a_runner_that_is_down_is_a_503_for_the_calls_it_was_sent():
    calls = CallGuardConfig(timeout_s=1, startup_timeout_s=1, accept_timeout_s=1, cooldown_s=5)
    handle = FakeHandle(raising(ActorDiedError()))
    client = RunnerClient("classification", handle, calls)  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailableError):
        await client.run_many([RunCall(texts=["a"]), RunCall(texts=["b"])])
