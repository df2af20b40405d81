import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capabilities.base import Resources, RunContext
from capabilities.batching import RunCall, run_batch
from capabilities.cache import CacheConfig
from capabilities.engine import ChoiceResult
from capabilities.errors import EngineUnavailableError, InvalidRequestError
from capabilities.gates import (
    GateCheck,
    GatesCapability,
    GatesSettings,
    RegexGate,
    RegexGateConfig,
    llm_gate_prompt,
    race,
)
from tests.fakes import FakeEngine

Behaviour = Literal["fire", "clear", "error", "raise_timeout", "hang"]


@dataclass
class FakeGate:
    """Answers after `rounds` event-loop rounds (no wall clock), or hangs until cancelled."""

    name: str
    behaviour: Behaviour
    rounds: int = 0
    priority: int = 100
    timeout_s: float = 1.0
    on_failure: Literal["open", "closed"] = "open"
    was_cancelled: bool = False
    cleaned_up: bool = False

    async def check(self, text: str) -> GateCheck:
        try:
            for _ in range(self.rounds):
                await asyncio.sleep(0)
            if self.behaviour == "hang":
                await asyncio.Event().wait()
            if self.behaviour == "error":
                raise RuntimeError("boom")
            if self.behaviour == "raise_timeout":
                raise TimeoutError("upstream said so")
            fired = self.behaviour == "fire"
            return GateCheck(fired=fired, score=0.9 if fired else 0.1)
        except asyncio.CancelledError:
            self.was_cancelled = True
            raise
        finally:
            self.cleaned_up = True


class CountingEmbedder(FakeEngine):
    """FakeEngine that also counts `embed` calls."""

    def __init__(self, name: str = "fake") -> None:
        super().__init__(name)
        self.embed_calls = 0

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.embed_calls += 1
        return await super().embed(texts)


class ScriptedGenerator:
    """Answers 'yes' with the probability scripted for the first keyword found in the prompt."""

    def __init__(self, p_yes: dict[str, float], name: str = "gen") -> None:
        self.name = name
        self.identity = f"{name}@scripted"
        self.p_yes = p_yes
        self.prompts: list[str] = []

    async def choose(self, prompts: Sequence[str], choices: Sequence[str]) -> list[ChoiceResult]:
        assert list(choices) == ["yes", "no"]
        self.prompts.extend(prompts)
        results = []
        for prompt in prompts:
            text = prompt.rsplit("Text: ", 1)[-1]
            p = next((p for word, p in self.p_yes.items() if word in text), 0.0)
            choice = "yes" if p >= 0.5 else "no"
            results.append(
                ChoiceResult(
                    choice=choice, probabilities={"yes": p, "no": 1 - p}, decoding="one_step"
                )
            )
        return results


def statuses(report) -> dict[str, str]:
    return {name: outcome.status for name, outcome in report.outcomes.items()}


def only_this_task_runs() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


async def test_no_gate_fires():
    report = await race([FakeGate("a", "clear"), FakeGate("b", "clear", rounds=3)], "hi")
    assert (report.fired, report.blocked, report.reason) == (None, False, None)
    assert statuses(report) == {"a": "clear", "b": "clear"}
    assert report.outcomes["a"].score == 0.1


async def test_first_fire_cancels_the_rest_and_leaves_no_task_running():
    slow, hanging = FakeGate("slow", "fire", rounds=10), FakeGate("hanging", "hang")
    report = await race([slow, FakeGate("quick", "fire"), hanging], "hi")
    assert (report.fired, report.blocked, report.reason) == ("quick", True, "fired")
    assert statuses(report) == {"slow": "cancelled", "quick": "fired", "hanging": "cancelled"}
    assert slow.was_cancelled and hanging.was_cancelled and hanging.cleaned_up
    assert only_this_task_runs()


async def test_clear_answers_do_not_end_the_race():
    report = await race([FakeGate("a", "clear"), FakeGate("b", "fire", rounds=5)], "hi")
    assert report.fired == "b"
    assert statuses(report) == {"a": "clear", "b": "fired"}


async def test_an_earlier_fire_beats_a_later_one_of_higher_priority():
    gates = [FakeGate("urgent", "fire", rounds=10, priority=1), FakeGate("quick", "fire")]
    report = await race(gates, "hi")
    assert report.fired == "quick"
    assert report.outcomes["urgent"].status == "cancelled"


async def test_simultaneous_fires_are_decided_by_priority():
    gates = [FakeGate("a", "fire", priority=100), FakeGate("b", "fire", priority=10)]
    report = await race(gates, "hi")
    assert report.fired == "b"
    assert statuses(report) == {"a": "fired", "b": "fired"}


async def test_simultaneous_fires_of_equal_priority_go_by_declaration_order():
    report = await race([FakeGate("a", "fire"), FakeGate("b", "fire")], "hi")
    assert report.fired == "a"


async def test_an_error_failing_open_does_not_block():
    report = await race([FakeGate("broken", "error"), FakeGate("b", "clear", rounds=2)], "hi")
    assert not report.blocked
    assert report.outcomes["broken"].status == "error"
    assert report.outcomes["broken"].error == "RuntimeError: boom"


async def test_an_error_failing_closed_wins_with_reason_error():
    broken = FakeGate("broken", "error", on_failure="closed")
    report = await race([FakeGate("late", "fire", rounds=5), broken], "hi")
    assert (report.fired, report.reason) == ("broken", "error")
    assert report.outcomes["late"].status == "cancelled"


async def test_an_open_error_does_not_stop_a_later_fire():
    report = await race([FakeGate("broken", "error"), FakeGate("late", "fire", rounds=5)], "hi")
    assert (report.fired, report.reason) == ("late", "fired")
    assert report.outcomes["broken"].status == "error"


@pytest.mark.parametrize(
    ("on_failure", "blocked", "fired"), [("open", False, None), ("closed", True, "y")]
)
async def test_both_gates_erroring(on_failure, blocked, fired):
    gates = [
        FakeGate("x", "error", priority=5, on_failure=on_failure),
        FakeGate("y", "error", priority=1, on_failure=on_failure),
    ]
    report = await race(gates, "hi")
    assert (report.blocked, report.fired) == (blocked, fired)
    assert statuses(report) == {"x": "error", "y": "error"}


@pytest.mark.parametrize(
    ("on_failure", "blocked", "reason"), [("open", False, None), ("closed", True, "timeout")]
)
async def test_timeout(on_failure, blocked, reason):
    stuck = FakeGate("stuck", "hang", timeout_s=0.01, on_failure=on_failure)
    report = await race([stuck, FakeGate("ok", "clear")], "hi")
    assert (report.blocked, report.reason) == (blocked, reason)
    assert statuses(report) == {"stuck": "timeout", "ok": "clear"}
    assert report.outcomes["stuck"].error is None
    assert stuck.cleaned_up


async def test_a_timeout_error_raised_by_the_gate_itself_is_an_error():
    report = await race([FakeGate("a", "raise_timeout")], "hi")
    assert report.outcomes["a"].status == "error"
    assert "upstream said so" in (report.outcomes["a"].error or "")


async def test_cancelling_the_race_cancels_every_gate():
    gates = [FakeGate("a", "hang"), FakeGate("b", "hang")]
    running = asyncio.create_task(race(gates, "hi"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert all(gate.was_cancelled and gate.cleaned_up for gate in gates)
    assert only_this_task_runs()


gate_specs = st.lists(
    st.tuples(
        st.sampled_from(["fire", "clear", "error"]),
        st.integers(0, 6),
        st.integers(0, 3),
        st.sampled_from(["open", "closed"]),
    ),
    min_size=1,
    max_size=6,
)


# No deadline: speed belongs in loadtests/, and a loaded CI machine would fail it by chance.
@settings(deadline=None)
@given(gate_specs)
async def test_race_properties(specs):
    gates = [
        FakeGate(f"g{i}", behaviour, rounds=rounds, priority=priority, on_failure=on_failure)
        for i, (behaviour, rounds, priority, on_failure) in enumerate(specs)
    ]
    report = await race(gates, "hi")
    assert list(report.outcomes) == [gate.name for gate in gates]
    assert report.blocked == (report.fired is not None) == (report.reason is not None)

    def blocks(gate: FakeGate) -> bool:
        failing_closed = gate.behaviour == "error" and gate.on_failure == "closed"
        return gate.behaviour == "fire" or failing_closed

    def status_blocks(gate: FakeGate) -> bool:
        status = report.outcomes[gate.name].status
        return status == "fired" or (status == "error" and gate.on_failure == "closed")

    assert report.blocked == any(blocks(gate) for gate in gates)
    for gate in gates:
        status = report.outcomes[gate.name].status
        expected = {"fire": "fired", "clear": "clear", "error": "error"}[gate.behaviour]
        assert status in (expected, "cancelled")
    if report.blocked:
        winner = next(gate for gate in gates if gate.name == report.fired)
        round_fires = [(g.priority, i) for i, g in enumerate(gates) if status_blocks(g)]
        assert min(round_fires) == (winner.priority, gates.index(winner))
        # Whatever answered before the winner was heard, not cancelled.
        for gate in gates:
            if gate.rounds < winner.rounds:
                assert report.outcomes[gate.name].status != "cancelled"
    else:
        assert "cancelled" not in statuses(report).values()
    assert only_this_task_runs()


async def test_regex_gate():
    gate = RegexGate(RegexGateConfig(name="card", pattern=r"\b\d{16}\b"))
    assert (await gate.check("my card is 1234567812345678")).fired
    assert not (await gate.check("my card is 1234")).fired


def gates_settings(**overrides) -> GatesSettings:
    base = {
        "embedding_model": "fake",
        "generative_model": "gen",
        "gates": [
            {"name": "card_number", "kind": "regex", "pattern": r"\b\d{16}\b", "priority": 1},
            {
                "name": "churn",
                "kind": "similarity",
                "examples": ["close my account", "cancel my subscription"],
            },
            {"name": "fraud", "kind": "similarity", "examples": ["someone stole my money"]},
            {"name": "angry", "kind": "llm", "question": "Is the customer angry?"},
        ],
    }
    return GatesSettings.model_validate(base | overrides)


async def loaded_capability(settings: GatesSettings, embedder, generator) -> GatesCapability:
    engines = {engine.name: engine for engine in (embedder, generator) if engine is not None}
    capability = GatesCapability(settings, Resources(engines=engines))
    await capability.load()
    return capability


async def test_capability_races_every_text_and_embeds_examples_once():
    embedder, generator = CountingEmbedder(), ScriptedGenerator({"furious": 0.9, "meh": 0.4})
    capability = await loaded_capability(gates_settings(), embedder, generator)
    assert embedder.embed_calls == 1
    examples = ["close my account", "cancel my subscription", "someone stole my money"]
    assert embedder.embedded == examples
    texts = ["please close my account", "I am furious", "card 1234567812345678", "meh, hello"]
    reports = await capability.run(texts, RunContext())
    assert [r.fired for r in reports] == ["churn", "angry", "card_number", None]
    churn = reports[0].outcomes["churn"]
    query, example = await embedder.embed([texts[0], "close my account"])
    assert churn.score == pytest.approx(float(example @ query), abs=1e-5)
    assert reports[3].outcomes["angry"] == reports[3].outcomes["angry"].model_copy(
        update={"status": "clear", "score": 0.4}
    )
    assert "Text: I am furious\n" in "".join(generator.prompts)
    assert only_this_task_runs()


def test_llm_gate_prompt_puts_the_question_first():
    one, two = (llm_gate_prompt("Is it spam?", text) for text in ("x", "y"))
    assert one == "Is it spam?\n\nText: x\nAnswer yes or no:"
    assert two.startswith("Is it spam?\n\nText: ")


async def test_load_refuses_a_missing_engine():
    with pytest.raises(InvalidRequestError, match="gates.generative_model"):
        await loaded_capability(gates_settings(), CountingEmbedder(), None)


@pytest.mark.parametrize(
    ("gates", "message"),
    [
        ([{"name": "a", "kind": "regex", "pattern": "x"}] * 2, "unique; repeated: a"),
        ([{"name": "bad", "kind": "regex", "pattern": "(unclosed"}], "gate 'bad': invalid pattern"),
        ([{"name": "s", "kind": "similarity", "examples": ["x"]}], "gate 's' .* embedding_model"),
        ([{"name": "l", "kind": "llm", "question": "q?"}], "gate 'l' .* generative_model"),
        ([{"name": "s", "kind": "similarity", "examples": []}], "at least 1"),
        ([{"name": "x", "kind": "vibes"}], "does not match any of the expected tags"),
        ([{"name": "t", "kind": "regex", "pattern": "x", "timeout_s": 0}], "greater than 0"),
        ([], "at least 1"),
    ],
)
def test_settings_refuse_unservable_gates(gates, message):
    with pytest.raises(ValueError, match=message):
        GatesSettings.model_validate({"gates": gates})


class RecoveringGenerator(ScriptedGenerator):
    """Fails its first `choose` as `failure` says (an engine restarting), then answers."""

    def __init__(self, failure: Literal["error", "hang"]) -> None:
        super().__init__({"furious": 0.9})
        self.failure: Literal["error", "hang"] | None = failure
        self.calls = 0

    async def choose(self, prompts: Sequence[str], choices: Sequence[str]) -> list[ChoiceResult]:
        self.calls += 1
        failure, self.failure = self.failure, None
        if failure == "error":
            raise EngineUnavailableError("engine 'gen' is down", 5)
        if failure == "hang":
            await asyncio.Event().wait()
        return await super().choose(prompts, choices)


@pytest.mark.parametrize(("failure", "status"), [("error", "error"), ("hang", "timeout")])
async def test_a_gate_that_failed_is_asked_again_not_answered_from_the_cache(failure, status):
    generator = RecoveringGenerator(failure)
    settings = GatesSettings.model_validate(
        {
            "generative_model": "gen",
            "gates": [{"name": "angry", "kind": "llm", "question": "Angry?", "timeout_s": 0.05}],
        }
    )
    capability = await loaded_capability(settings, None, generator)
    cache = CacheConfig(max_entries=100).build()

    [failed], _ = await run_batch(capability, [RunCall(texts=["I am furious"])], cache)
    [answered], report = await run_batch(capability, [RunCall(texts=["I am furious"])], cache)
    [cached], again = await run_batch(capability, [RunCall(texts=["I am furious"])], cache)

    assert statuses(failed.outputs[0]) == {"angry": status}
    assert statuses(answered.outputs[0]) == {"angry": "fired"}
    assert report.cache_hits == 0
    assert (again.cache_hits, cached.outputs, generator.calls) == (1, answered.outputs, 2)
