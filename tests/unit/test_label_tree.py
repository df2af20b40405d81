import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from capabilities.alerts import Condition
from capabilities.base import Resources, RunContext
from capabilities.classification import (
    Classification,
    ClassificationCapability,
    ClassificationSettings,
    Classifier,
    LabelScore,
)
from capabilities.errors import InvalidRequestError
from capabilities.label_tree import LabelTreeError, load_label_tree
from capabilities.recommendations import RecommendationsCapability, RecommendationsSettings
from deployments.http.schemas import ClassifyRequest
from tests.conftest import BANKING77
from tests.fakes import FakeClassifierEngine, FakeEngine
from tests.unit import test_classification

examples_csv = test_classification.examples_csv
"""The examples of the classification tests: their labels are the leaves of NESTED."""
NESTED = """
cards:
  description: Anything about a card
  children:
    - card_arrival: The card has not come
    - lost_card
money:
  - top_up
"""
PATHS = """
- {path: cards, description: Anything about a card}
- {path: cards/card_arrival, description: The card has not come}
- cards/lost_card
- money/top_up
"""


@pytest.fixture()
def tree_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tree.yaml"
    path.write_text(NESTED)
    return path


def settings(examples: Path | None, tree: Path | None, **overrides) -> ClassificationSettings:
    base = {
        "strategy": "knn",
        "embedding_model": "fake",
        "k": 3,
        "examples": {"path": str(examples), "label_column": "intent"} if examples else None,
        "label_tree": str(tree) if tree else None,
    }
    return ClassificationSettings.model_validate(base | overrides)


async def loaded(config: ClassificationSettings, **engines) -> Classifier:
    classifier = Classifier(config, **({"embedder": FakeEngine(), "generator": None} | engines))
    await classifier.load()
    return classifier


@pytest.mark.parametrize("content", [NESTED, PATHS])
def test_a_tree_is_read_from_nested_yaml_or_from_paths(tmp_path, content):
    path = tmp_path / "tree.yaml"
    path.write_text(content)
    tree, raw = load_label_tree(path)
    assert raw == content.encode()
    assert tree.roots == ["cards", "money"]
    assert tree.leaves == ["card_arrival", "lost_card", "top_up"]
    assert tree.path("lost_card") == ["cards", "lost_card"]
    assert tree.leaves_under("cards") == ["card_arrival", "lost_card"]
    assert tree.description("cards") == "Anything about a card"
    assert tree.description("card_arrival") == "The card has not come"
    assert tree.depth == 2


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("just a string", "a mapping of parent to children, or a list"),
        ("a: [x, y]\nb: [x]", "node 'x' appears twice (also at a/x)"),
        ("- a/x\n- b/x", "puts 'x' under 'b', but it is already at a/x"),
        ("a: {description: A, child: [x]}\nb: null", "unknown keys ['child']"),
        ("a: []\nb: null", "a: a parent needs at least one child"),
        ("a: [{x: 1, y: 2}]\nb: null", "a child in a list is a name or a one-key mapping"),
        ("a: 3\nb: null", "a node is null, a description, a list"),
        ("- a/x\n- 7", "a path is a string"),
        ("a: null", "give at least 2 leaves"),
        ("a: [x, y\n", "is not valid YAML"),
    ],
)
def test_bad_trees_are_refused_with_where_and_what(tmp_path, content, problem):
    path = tmp_path / "tree.yaml"
    path.write_text(content)
    with pytest.raises(LabelTreeError, match="label tree file .*tree.yaml") as error:
        load_label_tree(path)
    assert problem in str(error.value)


def test_a_missing_tree_file_is_named(tmp_path):
    with pytest.raises(LabelTreeError, match="nowhere.yaml does not exist"):
        load_label_tree(tmp_path / "nowhere.yaml")


def test_leaves_must_be_exactly_the_labels_of_the_examples(examples_csv, tmp_path):
    path = tmp_path / "tree.yaml"
    path.write_text("cards: [card_arrival, card_swallowed]\nmoney: [top_up]")
    config = settings(examples_csv, path)
    with pytest.raises(LabelTreeError) as error:
        ClassificationCapability.check_files(config)
    assert "labels of examples that are no leaf of the tree: ['lost_card']" in str(error.value)
    assert "leaves that examples never answers: ['card_swallowed']" in str(error.value)


def test_level_probabilities_are_sums_of_the_leaves_and_each_level_sums_to_one(tree_yaml):
    tree, _ = load_label_tree(tree_yaml)
    names = ["top_up", "lost_card", "card_arrival"]  # any column order
    leaves = np.random.default_rng(0).dirichlet(np.ones(3), size=20)
    nodes = dict(zip(tree.names, tree.node_probabilities(names, leaves).T, strict=True))
    np.testing.assert_allclose(nodes["cards"], leaves[:, 1] + leaves[:, 2])
    np.testing.assert_allclose(nodes["money"], leaves[:, 0])
    np.testing.assert_allclose(nodes["cards"] + nodes["money"], 1.0)


def test_paths_go_down_the_most_probable_node_of_each_level(tree_yaml):
    tree, _ = load_label_tree(tree_yaml)
    names = ["card_arrival", "lost_card", "top_up"]
    # top_up is the likeliest leaf, but cards the likeliest parent: the path follows the parent.
    [steps] = tree.decode(names, np.array([[0.35, 0.25, 0.4]]))
    assert [(s.name, round(s.probability, 2)) for s in steps] == [
        ("cards", 0.6),
        ("card_arrival", 0.35),
    ]
    [steps] = tree.decode(names, np.array([[0.35, 0.25, 0.4]]), depth=1)
    assert [s.name for s in steps] == ["cards"]
    [steps] = tree.decode(names, np.array([[0.35, 0.25, 0.4]]), min_probability=0.5)
    assert [s.name for s in steps] == ["cards"]
    # The first level answers even under the threshold; a sure leaf clears it.
    sure, unsure = tree.decode(names, np.array([[0.9, 0.05, 0.05], [0.3, 0.3, 0.4]]), None, 0.7)
    assert [s.name for s in sure] == ["cards", "card_arrival"]
    assert [s.name for s in unsure] == ["cards"]


STRATEGY_ENGINES = {
    "knn": {},
    "zero_shot": {},
    "trained_head": {},
    "generative": {"embedder": None, "generator": FakeEngine("gen")},
    "classifier": {
        "embedder": None,
        "sequence_classifier": FakeClassifierEngine(["card_arrival", "lost_card", "top_up"]),
    },
}
STRATEGY_SETTINGS = {
    "generative": {"generative_model": "gen", "embedding_model": None},
    "classifier": {"classifier_model": "fake-classifier", "embedding_model": None},
}


@pytest.mark.parametrize("strategy", list(STRATEGY_ENGINES))
async def test_every_strategy_answers_the_leaf_with_its_path_and_level_confidences(
    examples_csv, tree_yaml, strategy
):
    examples = None if strategy == "classifier" else examples_csv
    overrides = {"strategy": strategy} | STRATEGY_SETTINGS.get(strategy, {})
    classifier = await loaded(
        settings(examples, tree_yaml, **overrides), **STRATEGY_ENGINES[strategy]
    )
    results = await classifier.classify(["my card has not arrived", "top up by bank transfer"])
    for result in results:
        assert result.path is not None and len(result.path) == 2
        parent, leaf = result.path
        assert (result.label, result.confidence) == (leaf.label, leaf.score)
        under = [alt.score for alt in result.top_k if alt.label in ("card_arrival", "lost_card")]
        expected = sum(under) if parent.label == "cards" else 1 - sum(under)
        assert parent.score == pytest.approx(expected)
        assert parent.score >= leaf.score
    assert [r.path[0].label for r in results] == ["cards", "money"]
    [top] = await classifier.classify(["my card has not arrived"], depth=1)
    assert (top.label, top.confidence) == (top.path[0].label, top.path[0].score)
    assert top.label == "cards"
    assert top.confidence == pytest.approx(results[0].path[0].score)


async def test_the_tree_gives_labels_and_their_descriptions_to_zero_shot(tree_yaml):
    config = ClassificationSettings(
        embedding_model="fake", strategy="zero_shot", label_tree=tree_yaml
    )
    engine = FakeEngine()
    classifier = await loaded(config, embedder=engine)
    assert classifier.labels == ["card_arrival", "lost_card", "top_up"]
    assert "card arrival: The card has not come" in engine.embedded


async def test_configured_stop_applies_unless_the_request_sets_its_own(examples_csv, tree_yaml):
    classifier = await loaded(settings(examples_csv, tree_yaml, min_confidence=0.99))
    [stopped] = await classifier.classify(["my card has not arrived"])
    assert [step.label for step in stopped.path] == ["cards"]
    [full] = await classifier.classify(["my card has not arrived"], min_confidence=0.0)
    assert full.label == "card_arrival"


async def test_tree_options_that_cannot_apply_are_refused(examples_csv, tree_yaml):
    flat = await loaded(settings(examples_csv, None))
    with pytest.raises(InvalidRequestError, match="depth: this deployment's labels are flat"):
        await flat.classify(["x"], depth=1)
    with pytest.raises(InvalidRequestError, match="min_confidence: this deployment's labels"):
        await flat.classify(["x"], min_confidence=0.5)
    tree = await loaded(settings(examples_csv, tree_yaml))
    with pytest.raises(InvalidRequestError, match="depth: 3 is deeper than the label tree"):
        await tree.classify(["x"], depth=3)
    ad_hoc = [{"name": "a"}, {"name": "b"}]
    from capabilities.classification import LabelSpec

    labels = [LabelSpec.model_validate(label) for label in ad_hoc]
    with pytest.raises(InvalidRequestError, match="ad-hoc labels are flat"):
        await tree.classify(["x"], labels=labels, depth=1)
    [answer] = await tree.classify(["x"], labels=labels)
    assert answer.path is None


def test_settings_refuse_a_stop_without_a_tree(examples_csv):
    with pytest.raises(ValidationError, match="depth and min_confidence need a label_tree"):
        settings(examples_csv, None, depth=1)


@pytest.mark.parametrize(
    ("field", "value"), [("depth", 0), ("min_confidence", 1.5), ("min_confidence", -0.1)]
)
def test_request_refuses_out_of_range_stops(field, value):
    with pytest.raises(ValidationError, match=field):
        ClassifyRequest.model_validate({"texts": ["x"], field: value})


def test_request_passes_stops_to_classification():
    request = ClassifyRequest.model_validate({"texts": ["x"], "depth": 1, "min_confidence": 0.7})
    assert request.options()["classification"] == {"depth": 1, "min_confidence": 0.7}


async def test_editing_the_tree_changes_the_version(examples_csv, tree_yaml):
    resources = Resources(engines={"fake": FakeEngine()})

    async def version() -> str:
        capability = ClassificationCapability(settings(examples_csv, tree_yaml), resources)
        await capability.load()
        return capability.version

    before = await version()
    tree_yaml.write_text("cards: [card_arrival]\nmoney: [top_up, lost_card]")
    assert await version() != before


def on_path(*steps: tuple[str, float]) -> Classification:
    path = [LabelScore(label=name, score=score) for name, score in steps]
    return Classification(
        label=path[-1].label, confidence=path[-1].score, top_k=[path[-1]], strategy="knn", path=path
    )


def test_alert_conditions_may_name_a_parent():
    leaf = on_path(("cards", 0.9), ("lost_card", 0.8))
    parent_only = on_path(("cards", 0.6))
    assert Condition(label_in=["cards"]).matches("x", leaf)
    assert Condition(label_in=["cards"]).matches("x", parent_only)
    assert not Condition(label_in=["lost_card"]).matches("x", parent_only)
    assert not Condition(label_not_in=["cards"]).matches("x", leaf)
    assert Condition(label_not_in=["money"]).matches("x", leaf)


async def test_catalog_actions_may_name_a_parent(tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "actions:\n"
        "  - {id: freeze, title: Freeze, description: Freeze the card, labels: [lost_card]}\n"
        "  - {id: card-help, title: Cards, description: Card help, labels: [cards]}\n"
        "  - {id: top-up-help, title: Top up, description: Top up help, labels: [money]}\n"
    )
    engine = FakeEngine()
    config = RecommendationsSettings(catalog_path=catalog, embedding_model="fake", top_k=5)
    capability = RecommendationsCapability(config, Resources(engines={"fake": engine}))
    await capability.load()
    context = RunContext(
        parents={
            "classification": [
                on_path(("cards", 0.9), ("lost_card", 0.8)),
                on_path(("cards", 0.6)),
            ]
        }
    )
    lost, parent = await capability.run(["I lost my card", "card?"], context)
    assert sorted(action.id for action in lost.actions) == ["card-help", "freeze"]
    assert [action.id for action in parent.actions] == ["card-help"]
    assert {action.label for action in lost.actions} == {"lost_card"}


def test_the_banking77_tree_holds_the_77_intents_under_about_ten_parents():
    tree, _ = load_label_tree(BANKING77 / "label_tree.yaml")
    categories = json.loads((BANKING77 / "categories.json").read_text())
    tree.check_leaves(categories, "categories.json")
    assert 8 <= len(tree.roots) <= 12
    assert tree.depth == 2
    assert all(tree.description(parent) for parent in tree.roots)
