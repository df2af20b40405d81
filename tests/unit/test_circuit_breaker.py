import asyncio

import pytest

from deployments.calls.circuit_breaker import CircuitBreaker, CircuitOpenError, Outcome
from tests.fakes import FakeClock


class Down(Exception):
    """What the tests' callee raises when it is down."""


def outcome_of(error: BaseException) -> Outcome:
    if isinstance(error, Down):
        return "failure"
    if isinstance(error, asyncio.CancelledError):
        return "unknown"
    return "success"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("engine", 3, cooldown_s=10, outcome_of=outcome_of, clock=clock)


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(Down), breaker.attempt():
            raise Down


def succeed(breaker: CircuitBreaker) -> None:
    with breaker.attempt():
        pass


def test_it_opens_after_the_threshold_of_consecutive_failures(breaker):
    fail(breaker, 2)
    assert breaker.state == "closed"
    fail(breaker)
    assert breaker.state == "open"


def test_a_success_resets_the_count(breaker):
    fail(breaker, 2)
    succeed(breaker)
    fail(breaker, 2)
    assert breaker.state == "closed"


def test_an_open_breaker_rejects_without_calling_and_says_when_to_retry(breaker, clock):
    fail(breaker, 3)
    clock.now += 4
    called = False
    with pytest.raises(CircuitOpenError) as rejected, breaker.attempt():
        called = True
    assert not called
    assert rejected.value.retry_after_s == pytest.approx(6)
    assert "engine" in str(rejected.value)


def test_after_the_cooldown_one_probe_passes_and_its_success_closes(breaker, clock):
    fail(breaker, 3)
    clock.now += 10
    with breaker.attempt():
        assert breaker.state == "half_open"
        with pytest.raises(CircuitOpenError) as rejected, breaker.attempt():
            pass
        assert rejected.value.retry_after_s == 10
    assert breaker.state == "closed"
    succeed(breaker)


def test_a_failed_probe_opens_it_for_another_cooldown(breaker, clock):
    fail(breaker, 3)
    clock.now += 10
    fail(breaker)
    assert breaker.state == "open"
    clock.now += 9
    with pytest.raises(CircuitOpenError), breaker.attempt():
        pass
    clock.now += 1
    succeed(breaker)
    assert breaker.state == "closed"


def test_a_probe_that_says_nothing_lets_the_next_call_probe(breaker, clock):
    fail(breaker, 3)
    clock.now += 10
    with pytest.raises(asyncio.CancelledError), breaker.attempt():
        raise asyncio.CancelledError
    assert breaker.state == "half_open"
    succeed(breaker)
    assert breaker.state == "closed"


def test_an_error_of_the_callee_own_counts_as_an_answer(breaker):
    fail(breaker, 2)
    with pytest.raises(ValueError), breaker.attempt():
        raise ValueError("bad input")
    fail(breaker, 2)
    assert breaker.state == "closed"


def test_calls_admitted_before_it_opened_do_not_move_it(breaker, clock):
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow_call(outcome: type[Exception] | None) -> None:
            with breaker.attempt():
                await release.wait()
                if outcome is not None:
                    raise outcome

        slow = [asyncio.create_task(slow_call(None)), asyncio.create_task(slow_call(Down))]
        await asyncio.sleep(0)
        fail(breaker, 3)
        release.set()
        await asyncio.gather(*slow, return_exceptions=True)

    asyncio.run(scenario())
    assert breaker.state == "open"
    clock.now += 10
    fail(breaker)
    assert breaker.state == "open"


def test_a_threshold_below_one_is_refused(clock):
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker("engine", 0, cooldown_s=1, outcome_of=outcome_of, clock=clock)
