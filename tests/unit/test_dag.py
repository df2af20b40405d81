"""Registry, plans and capability-aware batching, with counting fake capabilities."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from capabilities.base import Capability, NoOptions, Resources, RunContext, TextSource
from capabilities.batching import RunCall, run_batch
from capabilities.cache import CacheConfig
from capabilities.errors import InvalidRequestError
from capabilities.plan import Plan, execute
from capabilities.registry import Registry, RegistryError, capability_class, import_capability

NO_SETTINGS = NoOptions()
NO_RESOURCES = Resources()


class Echo(BaseModel):
    value: str


class EchoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    suffix: str = ""


class Upper(Capability[NoOptions, Echo]):
    """A root capability that records every run it is given."""

    name = "upper"
    settings_model = NoOptions
    output_model = Echo
    options_model = EchoOptions

    def __init__(self, settings: NoOptions = NO_SETTINGS, resources: Resources = NO_RESOURCES):
        super().__init__(settings, resources)
        self.runs: list[list[str]] = []
        self.sources: list[list[list[TextSource]]] = []

    async def run(self, texts: Sequence[str], context: RunContext) -> list[Echo]:
        self.runs.append(list(texts))
        self.sources.append([list(sources) for sources in context.sources])
        suffix = context.options.suffix  # type: ignore[attr-defined]
        if suffix == "!bad":
            raise InvalidRequestError("suffix '!bad' is refused", "suffix")
        return [Echo(value=text.upper() + suffix) for text in texts]


class Child(Capability[NoOptions, Echo]):
    """Depends on `upper` and shows what it was handed."""

    name = "child"
    depends_on = ("upper",)
    settings_model = NoOptions
    output_model = Echo

    def __init__(self, settings: NoOptions = NO_SETTINGS, resources: Resources = NO_RESOURCES):
        super().__init__(settings, resources)
        self.runs: list[list[str]] = []

    async def run(self, texts: Sequence[str], context: RunContext) -> list[Echo]:
        self.runs.append(list(texts))
        parents = context.parents["upper"]
        return [Echo(value=f"{p.value}>{t}") for t, p in zip(texts, parents, strict=True)]  # type: ignore[attr-defined]


DIAMOND = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ()}


def test_levels_put_independent_capabilities_together():
    assert Registry(DIAMOND).levels == [["a", "e"], ["b", "c"], ["d"]]


def test_closure_adds_dependencies_transitively():
    assert Registry(DIAMOND).closure(["d"]) == {"a", "b", "c", "d"}
    assert Registry(DIAMOND).closure(["e"]) == {"e"}


def test_a_cycle_is_named():
    with pytest.raises(RegistryError, match=r"cycle: (x -> y -> x|y -> x -> y)"):
        Registry({"x": ("y",), "y": ("x",), "z": ()})


def test_an_unknown_dependency_is_named():
    with pytest.raises(RegistryError, match="'b' depends on 'nope', which is not configured"):
        Registry({"a": (), "b": ("nope",)})


def test_an_unknown_requested_capability_is_a_bad_request():
    with pytest.raises(InvalidRequestError, match=r"unknown capabilities \['sentiment'\]"):
        Registry(DIAMOND).closure(["a", "sentiment"])


def test_user_capabilities_load_by_import_path():
    assert import_capability("tests.unit.test_dag:Upper") is Upper
    assert capability_class("upper", "tests.unit.test_dag:Upper") is Upper
    with pytest.raises(RegistryError, match="declares name 'upper'"):
        capability_class("other", "tests.unit.test_dag:Upper")
    with pytest.raises(RegistryError, match="is not a capabilities.base.Capability"):
        import_capability("tests.unit.test_dag:Echo")
    with pytest.raises(RegistryError, match="is not built in"):
        capability_class("sentiment", None)


async def test_plan_gives_each_item_exactly_what_it_asked_for():
    registry = Registry({"upper": (), "child": ("upper",)})
    upper, child = Upper(), Child()
    plan = Plan.of(registry, [["upper"], ["child"], ["upper", "child"]])
    items_of: dict[str, list[list[int]]] = {}

    async def run(name, texts, parents, items):
        items_of[name] = items
        capability = upper if name == "upper" else child
        return await capability.run(texts, RunContext(parents=parents, options=EchoOptions()))

    outputs = await execute(plan, ["a", "b", "a"], run)
    assert [sorted(o) for o in outputs] == [["upper"], ["child"], ["child", "upper"]]
    assert outputs[1]["child"].value == "B>b"
    assert upper.runs == [["a", "b"]]  # deduplicated: "a" appears twice
    assert child.runs == [["b", "a"]]
    # Each run says which items its texts are for: "a" stands for items 0 and 2.
    assert items_of == {"upper": [[0, 2], [1]], "child": [[1], [2]]}


async def test_a_failing_capability_fails_the_request_with_its_own_error():
    registry = Registry({"upper": (), "child": ("upper",)})

    async def run(name, texts, parents, items):
        raise InvalidRequestError("nope", "labels")

    with pytest.raises(InvalidRequestError, match="nope"):
        await execute(Plan.of(registry, [["child"]]), ["a"], run)


async def test_the_seed_example_runs_three_times_not_five():
    """A: [upper], B: [upper, child], C: [upper, child] coalesced per capability."""
    upper, child = Upper(), Child()
    first, report = await run_batch(
        upper, [RunCall(texts=["a"]), RunCall(texts=["b"]), RunCall(texts=["c"])]
    )
    assert report.runs == 1 and upper.runs == [["a", "b", "c"]]
    parents = {"upper": [first[1].outputs[0]]}
    _, child_b = await run_batch(child, [RunCall(texts=["b"], parents=parents)])
    parents_c = {"upper": [first[2].outputs[0]]}
    _, child_c = await run_batch(Child(), [RunCall(texts=["c"], parents=parents_c)])
    assert report.runs + child_b.runs + child_c.runs == 3


async def test_a_batch_runs_once_per_distinct_options_and_dedupes_texts():
    upper = Upper()
    calls = [
        RunCall(texts=["a", "b"]),
        RunCall(texts=["b", "a", "a"]),
        RunCall(texts=["a"], options={"suffix": "?"}),
    ]
    replies, report = await run_batch(upper, calls)
    assert [[o.value for o in r.outputs] for r in replies] == [["A", "B"], ["B", "A", "A"], ["A?"]]
    assert report.runs == 2 and report.texts == 6 and report.unique_texts == 3
    assert sorted(upper.runs) == [["a"], ["a", "b"]]


def source(request_id: str, item_index: int) -> TextSource:
    return TextSource(request_id=request_id, item_index=item_index)


async def test_a_deduplicated_input_carries_the_sources_of_every_caller():
    upper = Upper()
    calls = [
        RunCall(texts=["a", "b"], sources=[[source("r1", 0)], [source("r1", 1)]]),
        RunCall(texts=["a"], sources=[[source("r2", 0), source("r2", 3)]]),
    ]
    await run_batch(upper, calls)
    assert upper.runs == [["a", "b"]]
    assert upper.sources == [
        [[source("r1", 0), source("r2", 0), source("r2", 3)], [source("r1", 1)]]
    ]


async def test_same_text_with_different_parents_is_two_inputs():
    child = Child()
    parents = {"upper": [Echo(value="X"), Echo(value="Y")]}
    replies, report = await run_batch(child, [RunCall(texts=["t", "t"], parents=parents)])
    assert [o.value for o in replies[0].outputs] == ["X>t", "Y>t"]
    assert report.unique_texts == 2


async def test_one_callers_bad_options_fail_only_that_caller():
    replies, _ = await run_batch(
        Upper(), [RunCall(texts=["a"]), RunCall(texts=["a"], options={"suffix": "!bad"})]
    )
    assert replies[0].outputs[0].value == "A"
    assert replies[1].failure.kind == "invalid_request"
    assert replies[1].failure.param == "suffix"
    unknown, _ = await run_batch(Upper(), [RunCall(texts=["a"], options={"sufix": "x"})])
    assert unknown[0].failure.kind == "invalid_request" and "sufix" in unknown[0].failure.message


async def test_an_unexpected_error_is_reported_as_internal():
    class Broken(Upper):
        async def run(self, texts, context):
            raise RuntimeError("boom")

    replies, _ = await run_batch(Broken(), [RunCall(texts=["a"])])
    assert replies[0].failure.kind == "internal" and "boom" in replies[0].failure.message


def test_version_follows_settings_and_files():
    first, second = Upper(), Upper()
    assert first.version == second.version
    second.track_file(b"rules: []")
    assert first.version != second.version


NAMES = ["a", "b", "c", "d", "e"]


@settings(max_examples=60, deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.sampled_from(["x", "y", "z"]), st.sets(st.sampled_from(NAMES), min_size=1)),
        min_size=1,
        max_size=8,
    )
)
def test_plans_run_each_needed_capability_once_after_its_parents(requests):
    registry = Registry(DIAMOND)
    texts = [text for text, _ in requests]
    plan = Plan.of(registry, [sorted(names) for _, names in requests])
    started: list[str] = []

    async def run(name, run_texts, parents, items):
        assert set(parents) == set(DIAMOND[name])
        assert [texts[index] for indexes in items for index in indexes[:1]] == run_texts
        assert all(parent in started for parent in DIAMOND[name])
        assert len(run_texts) == len(set(run_texts))
        started.append(name)
        return [Echo(value=f"{name}:{t}") for t in run_texts]

    outputs = asyncio.run(execute(plan, texts, run))
    needed = set().union(*(registry.closure(names) for _, names in requests))
    assert sorted(started) == sorted(needed)
    for (text, names), output in zip(requests, outputs, strict=True):
        assert set(output) == names
        assert all(output[name].value == f"{name}:{text}" for name in names)


async def test_cached_inputs_are_not_run_again():
    cache = CacheConfig(max_entries=100).build()
    upper = Upper()
    _, report = await run_batch(upper, [RunCall(texts=["a", "b"])], cache)
    assert report.runs == 1 and report.cache_hits == 0
    again, report = await run_batch(upper, [RunCall(texts=["b", "c"])], cache)
    assert [o.value for o in again[0].outputs] == ["B", "C"]
    assert report.runs == 1 and report.cache_hits == 1
    assert upper.runs == [["a", "b"], ["c"]]
    _, all_cached = await run_batch(upper, [RunCall(texts=["a"])], cache)
    assert all_cached.runs == 0 and upper.runs[-1] == ["c"]


async def test_a_new_settings_version_never_reads_old_answers():
    cache = CacheConfig(max_entries=100).build()
    await run_batch(Upper(), [RunCall(texts=["a"])], cache)
    changed = Upper()
    changed.track_file(b"new examples")
    _, report = await run_batch(changed, [RunCall(texts=["a"])], cache)
    assert report.cache_hits == 0 and changed.runs == [["a"]]


async def test_capabilities_with_effects_are_never_cached():
    class Effectful(Upper):
        cacheable = False

    cache = CacheConfig(max_entries=100).build()
    effectful = Effectful()
    await run_batch(effectful, [RunCall(texts=["a"])], cache)
    await run_batch(effectful, [RunCall(texts=["a"])], cache)
    assert effectful.runs == [["a"], ["a"]]
