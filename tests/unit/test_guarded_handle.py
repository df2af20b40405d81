"""The engine and runner clients over a fake Serve handle: timeouts, the breaker, and Ray's
overload and dead-replica errors answered as 503s with Retry-After."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, RayTaskError
from ray.serve.exceptions import BackPressureError

from capabilities.batching import RunCall, RunFailure, RunReply, failure_of
from capabilities.errors import EngineUnavailableError, InvalidRequestError
from deployments.calls.guarded_handle import GuardedCallee, GuardedHandle, loading
from deployments.config import CallGuardConfig
from deployments.dag.capability_clients import answer_of
from deployments.dag.runner_client import RunnerClient
from deployments.engine.client import EngineClient
from deployments.http.errors import ServiceUnavailableError, api_error_for

CALLS = CallGuardConfig(
    timeout_s=0.2, startup_timeout_s=0.2, accept_timeout_s=0.05, failure_threshold=2, cooldown_s=7
)
Behaviour = Callable[..., Awaitable[Any]]


class FakeResponse:
    """A one-item stream like Serve's `DeploymentResponseGenerator`, and cancellable like it; a
    replica takes the call at once, or when `acceptance` is set."""

    def __init__(self, result: Callable[[], Awaitable[Any]], acceptance: asyncio.Event | None):
        self._result = result
        self._acceptance = acceptance
        self.cancelled = False

    async def _fetch_future_result_async(self) -> None:
        if self._acceptance is not None:
            await self._acceptance.wait()

    async def __aiter__(self) -> AsyncIterator[Any]:
        yield await self._result()

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    """`handle.options(stream=True).guarded_call.remote(method, ...)` runs `behaviour` whatever
    the method, as the `GuardedCallee` behind it would run the method."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.acceptance: asyncio.Event | None = None
        self.calls: list[str] = []
        self.responses: list[FakeResponse] = []
        self.streamed = False

    def options(self, *, stream: bool) -> "FakeHandle":
        self.streamed = stream
        return self

    @property
    def guarded_call(self) -> "FakeHandle":
        return self

    def remote(self, method: str, *args: Any) -> FakeResponse:
        assert self.streamed, "a GuardedCallee answers streamed calls only"
        self.calls.append(method)
        response = FakeResponse(lambda: self.behaviour(*args), self.acceptance)
        self.responses.append(response)
        return response


def raising(error: BaseException) -> Behaviour:
    async def behaviour(*args: Any) -> Any:
        raise error

    return behaviour


async def hanging(*args: Any) -> Any:
    await asyncio.Event().wait()


async def echo(*args: Any) -> Any:
    return args


async def texts_back(texts: list[str], *args: Any) -> list[str]:
    return texts


def engine(behaviour: Behaviour) -> tuple[EngineClient, FakeHandle]:
    handle = FakeHandle(behaviour)
    return EngineClient("minilm", "minilm@test", handle, CALLS), handle  # type: ignore[arg-type]


def test_a_call_returns_the_reply():
    client, handle = engine(echo)
    assert asyncio.run(client.embeddings(("a", "b"))) == (["a", "b"], "normal")
    assert handle.calls == ["embeddings"]


def test_a_dead_replica_is_an_unavailable_engine():
    client, _ = engine(raising(ActorDiedError()))
    with pytest.raises(EngineUnavailableError) as failed:
        asyncio.run(client.embed(["a"]))
    assert "engine 'minilm' is down (ActorDiedError)" in str(failed.value)
    assert failed.value.retry_after_s == 7


def test_a_call_that_outlasts_the_timeout_is_cancelled_and_unavailable():
    client, handle = engine(hanging)
    with pytest.raises(EngineUnavailableError, match="did not answer within 0.2 s"):
        asyncio.run(client.embed(["a"]))
    assert handle.responses[0].cancelled


def test_a_call_no_replica_takes_fails_within_the_accept_timeout():
    client, handle = engine(texts_back)

    async def scenario() -> None:
        await client.embed(["a"])
        handle.acceptance = asyncio.Event()
        with pytest.raises(EngineUnavailableError, match="took no call within 0.05 s"):
            await client.embed(["b"])

    asyncio.run(scenario())
    assert handle.responses[-1].cancelled


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def starting_engine(clock: FakeClock) -> tuple[GuardedHandle, FakeHandle]:
    """A guarded handle made as its replica starts (window 30 s) of an engine no replica takes
    calls for until `handle.acceptance` is set (accept timeout 0.02 s); then it answers in 0.1 s,
    above the 0.05 s call timeout."""

    async def slow(*args: Any) -> Any:
        await asyncio.sleep(0.1)
        return args

    handle = FakeHandle(slow)
    handle.acceptance = asyncio.Event()
    calls = CallGuardConfig(
        timeout_s=0.05, startup_timeout_s=30, accept_timeout_s=0.02, failure_threshold=2
    )
    client = GuardedHandle("engine 'minilm'", handle, calls, EngineUnavailableError, clock)  # type: ignore[arg-type]
    return client, handle


def test_loading_within_the_startup_window_waits_for_a_starting_engine():
    async def scenario() -> None:
        client, handle = starting_engine(FakeClock())
        with loading():
            starting = asyncio.create_task(client.call("embed", ["example"]))
        await asyncio.sleep(0.2)
        handle.acceptance.set()  # type: ignore[union-attr]
        assert await starting == (["example"],)
        with pytest.raises(EngineUnavailableError, match="did not answer within 0.05 s"):
            await client.call("embed", ["a request"])

    asyncio.run(scenario())


def test_loading_after_the_startup_window_has_the_normal_timeouts():
    async def scenario() -> None:
        clock = FakeClock()
        client, _ = starting_engine(clock)
        clock.now += 31  # a reload of the settings, long after the replica started
        with loading(), pytest.raises(EngineUnavailableError, match="took no call within 0.02 s"):
            await client.call("embed", ["example"])

    asyncio.run(scenario())


def test_requests_to_a_dead_engine_fail_fast_and_open_the_breaker_before_any_answer():
    # A restarted ingress whose engine is down: its handle has never had an answer.
    async def scenario() -> None:
        client, handle = starting_engine(FakeClock())
        async with asyncio.timeout(5):  # the startup window (30 s) is not waited
            for _ in range(2):
                with pytest.raises(EngineUnavailableError, match="took no call within 0.02 s"):
                    await client.call("embed", ["a request"])
            with pytest.raises(EngineUnavailableError, match="calls resume in"):
                await client.call("embed", ["a request"])
        assert len(handle.calls) == 2

    asyncio.run(scenario())


def test_repeated_failures_open_the_breaker_so_calls_fail_without_waiting():
    client, handle = engine(hanging)

    async def scenario() -> None:
        for _ in range(CALLS.failure_threshold):
            with pytest.raises(EngineUnavailableError):
                await client.embed(["a"])
        with pytest.raises(EngineUnavailableError, match="calls resume in") as rejected:
            await client.embed(["a"])
        assert 0 < rejected.value.retry_after_s <= CALLS.cooldown_s

    asyncio.run(scenario())
    assert len(handle.calls) == CALLS.failure_threshold


def test_a_full_queue_fails_the_call_but_not_the_breaker():
    full = BackPressureError(num_queued_requests=4, max_queued_requests=4, retry_after_s=2)
    client, handle = engine(raising(full))

    async def scenario() -> None:
        for _ in range(CALLS.failure_threshold + 1):
            with pytest.raises(EngineUnavailableError, match="overloaded") as failed:
                await client.embed(["a"])
            assert failed.value.retry_after_s == 2

    asyncio.run(scenario())
    assert len(handle.calls) == CALLS.failure_threshold + 1


def test_other_errors_propagate_unchanged():
    client, _ = engine(raising(ValueError("a real bug")))
    with pytest.raises(ValueError, match="a real bug"):
        asyncio.run(client.embed(["a"]))


def test_the_readiness_check_bypasses_an_open_breaker():
    client, handle = engine(raising(ActorDiedError()))

    async def scenario() -> None:
        for _ in range(CALLS.failure_threshold + 1):
            with pytest.raises(EngineUnavailableError):
                await client.embed(["a"])
        handle.behaviour = echo
        await client.ready()

    asyncio.run(scenario())
    assert handle.calls[-1] == "ready"


def test_an_unavailable_runner_is_a_503_with_retry_after():
    handle = FakeHandle(raising(ActorDiedError()))
    runner = RunnerClient("classification", handle, CALLS)  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailableError) as failed:
        asyncio.run(runner.run_many([RunCall(texts=["a"])]))
    assert failed.value.status_code == 503
    assert failed.value.headers() == {"Retry-After": "7"}


def test_an_engine_outage_inside_a_runner_comes_back_as_a_503():
    failure = failure_of(EngineUnavailableError("engine 'minilm' is down", 4.2))
    assert failure == RunFailure(
        kind="unavailable", message="engine 'minilm' is down", retry_after_s=4.2
    )
    with pytest.raises(ServiceUnavailableError) as failed:
        answer_of("classification", RunReply(failure=failure, version="v1"))
    assert "capability 'classification' is unavailable" in failed.value.message
    assert failed.value.headers() == {"Retry-After": "5"}


def test_an_engine_outage_at_the_ingress_is_a_503():
    answer = api_error_for(EngineUnavailableError("engine 'minilm' is down", 3), "test")
    assert isinstance(answer, ServiceUnavailableError)
    assert (answer.status_code, answer.code) == (503, "service_unavailable")
    assert answer.headers() == {"Retry-After": "3"}


def test_a_callee_answers_a_guarded_call_as_a_stream_of_its_one_answer():
    class Callee(GuardedCallee):
        async def embed(self, texts: list[str]) -> list[int]:
            return [len(text) for text in texts]

    async def scenario() -> list[Any]:
        return [item async for item in Callee().guarded_call("embed", ["ab", "c"])]

    assert asyncio.run(scenario()) == [[2, 1]]


def test_a_typed_error_of_the_callee_arrives_as_itself():
    wrapped = RayTaskError("embed", "Traceback (most recent call last): ...", too_long())
    client, _ = engine(raising(wrapped))
    with pytest.raises(InvalidRequestError) as failed:
        asyncio.run(client.embeddings(["a"]))
    assert str(failed.value) == "the prompt is longer than the model's context"
    assert failed.value.param == "texts"


def test_an_untyped_error_of_the_callee_stays_rays():
    client, _ = engine(raising(RayTaskError("embed", "Traceback ...", KeyError("x"))))
    with pytest.raises(RayTaskError):
        asyncio.run(client.embeddings(["a"]))


def too_long() -> InvalidRequestError:
    return InvalidRequestError("the prompt is longer than the model's context", "texts")
