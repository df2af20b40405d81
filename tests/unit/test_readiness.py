"""/readyz's check: what it says when a part fails, and how long an answer is reused."""

import asyncio
import logging

import pytest

from deployments.http.errors import NotReadyError
from deployments.http.readiness import Readiness


class Part:
    """A check that counts its runs and fails while `error` is set."""

    def __init__(self) -> None:
        self.runs = 0
        self.error: Exception | None = None

    async def __call__(self) -> None:
        self.runs += 1
        await asyncio.sleep(0.01)
        if self.error is not None:
            raise self.error


async def test_a_ready_answer_names_every_part_and_when_it_was_checked():
    engine, capability = Part(), Part()
    status = await Readiness({"minilm": engine}, {"classification": capability}).status()
    assert (status.engines, status.capabilities) == (["minilm"], ["classification"])
    assert status.checked_at > 0 and (engine.runs, capability.runs) == (1, 1)


async def test_a_failure_names_the_part_but_never_echoes_the_error(caplog):
    engine, capability = Part(), Part()
    engine.error = RuntimeError("connect to 10.0.4.7:6379 failed; token=abc /srv/models/llama")
    readiness = Readiness({"minilm": engine}, {"classification": capability})
    with (
        caplog.at_level(logging.WARNING, logger="capserve"),
        pytest.raises(NotReadyError) as raised,
    ):
        await readiness.status()
    message = str(raised.value)
    assert message == "not ready: engine 'minilm' not answering; retry shortly"
    assert "10.0.4.7" in caplog.text  # the operator still finds it in the log


async def test_answers_and_failures_are_reused_for_the_ttl_and_concurrent_probes_share_one():
    engine = Part()
    readiness = Readiness({"minilm": engine}, {}, ttl_s=0.3)
    first, *others = await asyncio.gather(*(readiness.status() for _ in range(20)))
    assert engine.runs == 1
    assert {status.checked_at for status in others} == {first.checked_at}
    assert (await readiness.status()).checked_at == first.checked_at
    assert engine.runs == 1

    await asyncio.sleep(0.4)
    engine.error = RuntimeError("down")
    with pytest.raises(NotReadyError):
        await readiness.status()
    with pytest.raises(NotReadyError):
        await readiness.status()
    assert engine.runs == 2
