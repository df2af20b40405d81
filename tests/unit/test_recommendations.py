import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from capabilities.base import Resources, RunContext
from capabilities.classification import Classification
from capabilities.errors import InvalidRequestError
from capabilities.label_tree import load_label_tree
from capabilities.recommendations import (
    CatalogAction,
    CatalogError,
    RecommendationsCapability,
    RecommendationsSettings,
    action_ids_schema,
    generative_prompt,
    load_catalog,
)
from capabilities.registry import capability_class
from tests.fakes import FakeEngine, classified

CATALOG_YAML = """\
actions:
  - id: freeze
    title: Freeze card
    description: Freeze a stolen wallet card.
    labels: [lost_card]
  - id: replace
    title: Replace card
    description: Order replacement plastic.
    labels: [lost_card, card_arrival]
  - id: agent
    title: Talk to an agent
    description: Chat with support staff.
  - id: track
    title: Track delivery
    description: Follow the courier parcel.
    labels: [card_arrival]
  - id: topup
    title: Top up
    description: Add money by bank transfer.
    labels: [top_up]
"""

# The same catalog as records, as a JSONL catalog holds it.
CATALOG_ACTIONS: list[dict[str, Any]] = yaml.safe_load(CATALOG_YAML)["actions"]


class RecordingEngine(FakeEngine):
    """FakeEngine that also records each embed call's batch, to count engine calls."""

    def __init__(self, name: str = "fake") -> None:
        super().__init__(name)
        self.embed_calls: list[list[str]] = []

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.embed_calls.append(list(texts))
        return await super().embed(texts)


class ScriptedGenerator:
    """Answers generate_json with `answer(prompt, schema)` and records every call."""

    def __init__(self, answer: Callable[[str, dict[str, Any]], dict[str, Any]], name: str = "gen"):
        self.name = name
        self.identity = f"{name}@scripted"
        self.answer = answer
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    async def generate_json(
        self, prompts: Sequence[str], json_schema: dict[str, Any]
    ) -> list[dict[str, Any]]:
        self.calls.append((list(prompts), json_schema))
        return [self.answer(prompt, json_schema) for prompt in prompts]


def first_candidates(prompt: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"action_ids": schema["properties"]["action_ids"]["items"]["enum"][:2]}


@pytest.fixture()
def catalog_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG_YAML)
    return path


def context(*classifications: Classification) -> RunContext:
    return RunContext(parents={"classification": list(classifications)})


async def loaded(catalog: Path, engine: Any = None, **overrides: Any) -> RecommendationsCapability:
    engine = engine if engine is not None else RecordingEngine()
    base: dict[str, Any] = {"catalog_path": str(catalog), "embedding_model": engine.name}
    settings = RecommendationsSettings.model_validate(base | overrides)
    capability = RecommendationsCapability(settings, Resources(engines={engine.name: engine}))
    await capability.load()
    return capability


def ids(result) -> list[str]:
    return [action.id for action in result.actions]


async def test_only_actions_for_the_predicted_label_are_recommended(catalog_yaml):
    capability = await loaded(catalog_yaml, top_k=10)
    lost, topped = await capability.run(
        ["my card was stolen", "add money"], context(classified("lost_card"), classified("top_up"))
    )
    assert set(ids(lost)) == {"freeze", "replace", "agent"}
    assert set(ids(topped)) == {"topup", "agent"}
    assert {action.label for action in lost.actions} == {"lost_card"}


async def test_actions_are_ranked_by_cosine_similarity(catalog_yaml):
    engine = RecordingEngine()
    capability = await loaded(catalog_yaml, engine, top_k=10)
    text = "freeze my stolen wallet card"
    [result] = await capability.run([text], context(classified("lost_card")))
    assert ids(result)[0] == "freeze"
    [query] = await engine.embed([text])
    actions = {a["id"]: a for a in CATALOG_ACTIONS}
    for recommendation in result.actions:
        action = actions[recommendation.id]
        [vector] = await engine.embed([f"{action['title']}: {action['description']}"])
        expected = min(1.0, max(0.0, float(vector @ query)))
        assert recommendation.score == pytest.approx(expected, abs=1e-5)
        assert recommendation.title == action["title"]
    scores = [recommendation.score for recommendation in result.actions]
    assert scores == sorted(scores, reverse=True)


async def test_top_k_caps_the_actions_per_text(catalog_yaml):
    capability = await loaded(catalog_yaml, top_k=1)
    [result] = await capability.run(["freeze my card"], context(classified("lost_card")))
    assert ids(result) == ["freeze"]
    default = await loaded(catalog_yaml)
    [result] = await default.run(["freeze my card"], context(classified("lost_card")))
    assert len(result.actions) == 3


async def test_below_min_confidence_a_text_gets_nothing_and_is_not_embedded(catalog_yaml):
    engine = RecordingEngine()
    capability = await loaded(catalog_yaml, engine, min_confidence=0.5)
    engine.embed_calls.clear()
    unsure, sure = await capability.run(
        ["unsure text", "sure text"],
        context(classified("lost_card", 0.49), classified("lost_card", 0.5)),
    )
    assert unsure.actions == []
    assert sure.actions
    assert engine.embed_calls == [["sure text"]]


async def test_generic_actions_apply_to_every_label_even_unknown_ones(catalog_yaml):
    capability = await loaded(catalog_yaml)
    [result] = await capability.run(["hello"], context(classified("not_in_the_catalog")))
    assert ids(result) == ["agent"]


async def test_a_label_without_applicable_actions_gets_an_empty_list(tmp_path):
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(json.dumps(a) for a in CATALOG_ACTIONS if a["id"] != "agent"))
    engine = RecordingEngine()
    capability = await loaded(path, engine)
    engine.embed_calls.clear()
    [result] = await capability.run(["hello"], context(classified("not_in_the_catalog")))
    assert result.actions == []
    assert engine.embed_calls == []


async def test_actions_are_embedded_once_at_load_in_chunks_and_texts_in_one_call(catalog_yaml):
    engine = RecordingEngine()
    capability = await loaded(catalog_yaml, engine, embed_chunk_size=2)
    action_texts = [f"{a['title']}: {a['description']}" for a in CATALOG_ACTIONS]
    assert engine.embed_calls == [action_texts[0:2], action_texts[2:4], action_texts[4:]]
    engine.embed_calls.clear()
    texts = ["stolen card", "add money", "stolen card"]
    results = await capability.run(
        texts, context(classified("lost_card"), classified("top_up"), classified("lost_card"))
    )
    assert engine.embed_calls == [["stolen card", "add money"]]
    assert results[0] == results[2]


async def test_parents_must_align_with_texts(catalog_yaml):
    capability = await loaded(catalog_yaml)
    with pytest.raises(ValueError, match="must align"):
        await capability.run(["a", "b"], context(classified("lost_card")))


def test_jsonl_and_yaml_catalogs_load_the_same_actions(catalog_yaml, tmp_path):
    jsonl = tmp_path / "catalog.jsonl"
    jsonl.write_text("\n".join(json.dumps(a) for a in CATALOG_ACTIONS) + "\n\n")
    from_yaml, _ = load_catalog(catalog_yaml)
    from_jsonl, _ = load_catalog(jsonl)
    assert from_yaml.actions == from_jsonl.actions
    assert from_yaml.actions[2].labels == ()
    assert from_yaml.labels == {"lost_card", "card_arrival", "top_up"}
    # File order, generic actions included.
    assert from_yaml.applicable(["card_arrival"]) == (1, 2, 3)
    assert from_yaml.applicable(["unknown"]) == (2,)


def test_a_null_labels_key_means_every_label(tmp_path):
    path = tmp_path / "catalog.yml"
    path.write_text("actions:\n  - id: a\n    title: A\n    description: d\n    labels:\n")
    catalog, _ = load_catalog(path)
    assert catalog.applicable(["anything"]) == (0,)


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("missing.yaml", None, "does not exist"),
        ("empty.yaml", "", "has no actions"),
        ("empty.jsonl", "\n\n", "has no actions"),
        ("no_actions.yaml", "actions: []\n", "has no actions"),
        ("list.yaml", "- id: a\n", "needs a top-level 'actions:' list"),
        ("extra.yaml", "actions: []\nother: 1\n", "unknown top-level keys ['other']"),
        ("broken.yaml", "actions:\n  - id: [a\n", "line 3: invalid YAML"),
        (
            "broken.jsonl",
            '{"id": "a", "title": "A", "description": "d"}\n{"id": \n',
            "line 2: invalid JSON",
        ),
        (
            "missing_title.yaml",
            "actions:\n  - id: a\n    description: d\n",
            "action 1 (id 'a'): title: Field required",
        ),
        (
            "unknown_field.jsonl",
            '{"id": "a", "title": "A", "description": "d", "url": "x"}\n',
            "line 1: url: Extra inputs",
        ),
        ("not_object.jsonl", "[1, 2]\n", "line 1: action: Input should be a valid dictionary"),
        (
            "duplicate.yaml",
            "actions:\n" + "  - {id: a, title: A, description: d}\n" * 2,
            "action 2 (id 'a'): duplicate id 'a' (first at action 1 (id 'a'))",
        ),
        (
            "duplicate.jsonl",
            '\n{"id": "a", "title": "A", "description": "d"}\n' * 2,
            "line 4: duplicate id 'a' (first at line 2)",
        ),
        ("catalog.txt", "x", "unsupported suffix '.txt'"),
    ],
)  # fmt: skip
def test_catalog_errors_name_the_file_and_the_place(tmp_path, name, content, where):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(CatalogError) as raised:
        load_catalog(path)
    assert str(path) in str(raised.value)
    assert where in str(raised.value)


async def test_load_reports_catalog_errors(tmp_path):
    with pytest.raises(CatalogError, match="missing.yaml does not exist"):
        await loaded(tmp_path / "missing.yaml")


async def test_version_follows_the_catalog_content(catalog_yaml):
    first = await loaded(catalog_yaml)
    same = await loaded(catalog_yaml)
    assert first.version == same.version
    catalog_yaml.write_text(CATALOG_YAML.replace("Freeze card", "Lock card"))
    edited = await loaded(catalog_yaml)
    assert edited.version != first.version


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"embedding_model": None}, "mode 'similarity' needs embedding_model"),
        ({"mode": "generative"}, "mode 'generative' needs generative_model"),
        ({"top_k": 0}, "greater than 0"),
        ({"min_confidence": 1.5}, "less than or equal to 1"),
        ({"catalog_path": "catalog.csv"}, "must end in one of"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_settings_refuse_unservable_combinations(overrides, message):
    base = {"catalog_path": "catalog.yaml", "embedding_model": "fake"}
    with pytest.raises(ValueError, match=message):
        RecommendationsSettings.model_validate(base | overrides)


def test_catalog_path_is_expanded_and_absolute():
    settings = RecommendationsSettings(catalog_path=Path("~/catalog.yaml"), embedding_model="fake")
    assert settings.catalog_path == (Path.home() / "catalog.yaml").resolve()


@pytest.mark.parametrize("mode", ["similarity", "generative"])
async def test_a_missing_engine_is_refused_with_the_field_name(catalog_yaml, mode):
    settings = RecommendationsSettings(
        catalog_path=catalog_yaml, mode=mode, embedding_model="absent", generative_model="absent"
    )
    capability = RecommendationsCapability(settings, Resources(engines={}))
    field = "embedding_model" if mode == "similarity" else "generative_model"
    with pytest.raises(InvalidRequestError, match=f"recommendations.{field}: no engine named"):
        await capability.load()


def test_the_registry_finds_the_built_in():
    found = capability_class("recommendations", None)
    assert found is RecommendationsCapability
    assert found.depends_on == ("classification",)


async def generative(catalog: Path, answer=first_candidates, **overrides: Any):
    generator = ScriptedGenerator(answer)
    settings = {"mode": "generative", "generative_model": "gen", "embedding_model": None}
    capability = await loaded(catalog, generator, **(settings | overrides))
    return capability, generator


async def test_generative_makes_one_call_per_label_with_a_shared_schema(catalog_yaml):
    capability, generator = await generative(catalog_yaml, top_k=5)
    texts = ["stolen card", "add money", "card gone", "stolen card"]
    parents = [classified(label) for label in ("lost_card", "top_up", "lost_card", "lost_card")]
    results = await capability.run(texts, context(*parents))
    assert len(generator.calls) == 2
    calls_by_candidates = {
        tuple(schema["properties"]["action_ids"]["items"]["enum"]): (prompts, schema)
        for prompts, schema in generator.calls
    }
    assert set(calls_by_candidates) == {("freeze", "replace", "agent"), ("agent", "topup")}
    lost_prompts, lost_schema = calls_by_candidates[("freeze", "replace", "agent")]
    assert len(lost_prompts) == 2  # identical texts are asked once
    assert lost_schema == action_ids_schema(["freeze", "replace", "agent"], top_k=5)
    assert lost_schema["properties"]["action_ids"]["maxItems"] == 3
    assert ids(results[0]) == ["freeze", "replace"]
    assert ids(results[1]) == ["agent", "topup"]
    assert results[0] == results[3]
    assert [action.score for action in results[0].actions] == [1.0, 0.5]


async def test_generative_prompt_puts_instruction_and_candidates_first(catalog_yaml):
    capability, generator = await generative(catalog_yaml)
    await capability.run(["stolen card"], context(classified("lost_card")))
    [([prompt], _)] = generator.calls
    instruction = capability.settings.instruction
    assert prompt.startswith(
        f"{instruction}\nActions:\n"
        "- freeze: Freeze card — Freeze a stolen wallet card.\n"
        "- replace: Replace card — Order replacement plastic.\n"
        "- agent: Talk to an agent — Chat with support staff.\n\n"
    )
    assert prompt.endswith("Text: stolen card\nPredicted label: lost_card\nAnswer: ")


def test_generative_prompts_share_their_static_part():
    candidates = [CatalogAction(id="a", title="A", description="d")]
    one, two = (generative_prompt("Pick.", candidates, text, "label") for text in ("x", "y"))
    static = "Pick.\nActions:\n- a: A — d\n\nText: "
    assert one.startswith(static) and two.startswith(static)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"action_ids": ["replace", "nope", "replace", 7, "agent"]}, ["replace", "agent"]),
        ({"action_ids": ["topup", "freeze"]}, ["freeze"]),  # topup is not a lost_card candidate
        ({"action_ids": ["agent", "freeze", "replace"]}, ["agent", "freeze"]),  # top_k
        ({"action_ids": "freeze"}, []),
        ({}, []),
    ],
)
async def test_generative_keeps_known_unique_ids_in_order(catalog_yaml, reply, expected):
    capability, _ = await generative(catalog_yaml, answer=lambda prompt, schema: reply, top_k=2)
    [result] = await capability.run(["stolen card"], context(classified("lost_card")))
    assert ids(result) == expected
    assert [action.score for action in result.actions] == [
        1 / (rank + 1) for rank in range(len(expected))
    ]


async def test_generative_asks_nothing_for_uncertain_texts(catalog_yaml):
    capability, generator = await generative(catalog_yaml, min_confidence=0.8)
    [result] = await capability.run(["stolen card"], context(classified("lost_card", 0.3)))
    assert result.actions == []
    assert generator.calls == []


@pytest.fixture(scope="module")
def banking77(project_root: Path) -> Path:
    return project_root / "data" / "banking77"


def test_shipped_catalog_covers_every_banking77_label(banking77):
    catalog, _ = load_catalog(banking77 / "catalog.yaml")
    labels = json.loads((banking77 / "categories.json").read_text())
    tree, _ = load_label_tree(banking77 / "label_tree.yaml")
    # An action may name a parent of the label tree; it then applies to every intent under it.
    assert sorted(catalog.labels - set(tree.names)) == []
    # Generic actions apply everywhere; each label still needs two actions of its own.
    specific = {label: [a.id for a in catalog.actions if label in a.labels] for label in labels}
    assert {label: found for label, found in specific.items() if len(found) < 2} == {}
    assert any(not action.labels for action in catalog.actions)
    assert 60 <= len(catalog.actions) <= 91


async def test_shipped_catalog_recommends_for_sample_texts(banking77):
    with (banking77 / "examples.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))[::500]
    capability = await loaded(banking77 / "catalog.yaml")
    results = await capability.run(
        [row["text"] for row in rows], context(*(classified(row["category"]) for row in rows))
    )
    for row, result in zip(rows, results, strict=True):
        assert len(result.actions) == 3
        applicable = {
            a.id for a in capability.catalog.actions if not a.labels or row["category"] in a.labels
        }
        assert set(ids(result)) <= applicable
        assert all(0 <= action.score <= 1 for action in result.actions)


def test_a_jsonl_catalog_keeps_unicode_separators_in_descriptions(tmp_path):
    description = "Freeze the card.\u2028Then order a new one.\u0085Done."
    path = tmp_path / "catalog.jsonl"
    action = {"id": "freeze", "title": "Freeze", "description": description}
    path.write_text(json.dumps(action, ensure_ascii=False) + "\n", encoding="utf-8")
    catalog, _ = load_catalog(path)
    assert [a.description for a in catalog.actions] == [description]
