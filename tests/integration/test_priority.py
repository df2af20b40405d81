"""The real MiniLM engine under vLLM's priority scheduling, contended: one sequence per step, so
requests wait in vLLM's queue and the order they are served in shows which it took first."""

import asyncio

import pytest

from tests.integration.conftest import minilm_config, started

pytestmark = pytest.mark.integration
WAITING_LOW = 120


@pytest.fixture(scope="module")
def one_at_a_time():
    config = minilm_config()
    engine_args = {**config.engine_args.model_dump(), "max_num_seqs": 1}
    assert engine_args["scheduling_policy"] == "priority"  # capserve's default
    yield from started(
        config.model_copy(update={"engine_args": type(config.engine_args)(**engine_args)})
    )


async def test_a_high_priority_request_overtakes_the_batch_lines_waiting(one_at_a_time):
    finished: list[str] = []

    async def embed(name: str, priority: str) -> None:
        vectors = await one_at_a_time.embed([f"where is my card, ticket {name}"], priority)
        assert vectors.shape == (1, 384)
        finished.append(name)

    low = [asyncio.create_task(embed(f"low-{n}", "low")) for n in range(WAITING_LOW)]
    while not finished:  # the engine is busy with the batch lines
        await asyncio.sleep(0.005)
    waiting = WAITING_LOW - len(finished)
    await asyncio.gather(embed("high", "high"), *low)
    served_after = len(finished) - 1 - finished.index("high")
    # First come, first served would answer it last, after every line that was waiting.
    assert served_after >= waiting // 2, (waiting, finished.index("high"))
