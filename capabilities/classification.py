"""Classification: a label with a confidence per text, by one of five strategies.

Every strategy first computes a `LabelDistribution` (a probability per label, per text), and one
ranking turns it into answers: the confidence is always the top label's probability. With a label
tree (capabilities/label_tree.py) the answer is a path from the top, each level with its
probability, and the label is where the path stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Protocol, get_args

import numpy as np
from async_lru import alru_cache
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from capabilities.base import Capability, RunContext
from capabilities.engine import ChoiceDecoding, ClassifierEngine, EmbeddingEngine, GenerativeEngine
from capabilities.errors import InvalidRequestError
from capabilities.examples import EmbeddingCache, ExamplesSource, LabelledExamples, load_examples
from capabilities.label_tree import LabelTree, load_label_tree
from capabilities.linear_head import HeadSettings, LinearHead, fit_linear_head, softmax

Strategy = Literal["knn", "zero_shot", "generative", "trained_head", "classifier"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
FIXED_LABEL_STRATEGIES: frozenset[Strategy] = frozenset({"knn", "trained_head", "classifier"})
"""Strategies whose label set is fixed by the examples or the checkpoint: no ad-hoc labels."""
MODEL_FIELDS: dict[Strategy, str] = {
    "knn": "embedding_model",
    "zero_shot": "embedding_model",
    "trained_head": "embedding_model",
    "generative": "generative_model",
    "classifier": "classifier_model",
}
"""The settings field naming the model each strategy runs on."""
AD_HOC_LABEL_SETS_KEPT = 64
MAX_AD_HOC_LABELS = 1000
LABEL_CUE = "Label:"
"""The last line of a generative prompt; the model answers after it."""


TreeDepth = Annotated[
    int | None,
    Field(ge=1, description="With a label tree: stop each path at this level (1 = the top)."),
]
MinConfidence = Annotated[
    float | None,
    Field(
        ge=0,
        le=1,
        description="With a label tree: answer the deepest node of each path whose probability "
        "is at least this; the top level always answers.",
    ),
]
LabelPath = Annotated[
    list["LabelScore"] | None,
    Field(
        description="With a label tree: the nodes from the top down to `label`, each with its "
        "probability (a parent's is the sum of its children's).",
    ),
]


class LabelSpec(BaseModel):
    """A label, optionally described; zero-shot embeds the description, generative prompts it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=1000)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: object) -> object:
        return {"name": value} if isinstance(value, str) else value

    @property
    def embedding_text(self) -> str:
        readable = self.name.replace("_", " ")
        return f"{readable}: {self.description}" if self.description else readable


class ClassificationSettings(BaseModel):
    """Configuration of the classification capability."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy = "knn"
    embedding_model: str | None = Field(
        default=None, description="Pooling model for knn, zero_shot and trained_head."
    )
    generative_model: str | None = Field(default=None, description="Generate model for generative.")
    classifier_model: str | None = Field(
        default=None,
        description="Sequence-classification model (pooling runner) for classifier; its labels "
        "are the checkpoint's id2label.",
    )
    examples: ExamplesSource | None = None
    labels: list[LabelSpec] | None = Field(
        default=None,
        description="Label set; defaults to the distinct labels of `examples`, the checkpoint's "
        "id2label or the leaves of `label_tree`.",
    )
    label_tree: Path | None = Field(
        default=None,
        description="YAML file arranging the labels in a tree (they are its leaves); answers "
        "then carry the path from the top with a probability per level.",
    )
    depth: TreeDepth = None
    min_confidence: MinConfidence = None
    k: int = Field(default=10, gt=0, description="Neighbours that vote in knn.")
    head: HeadSettings = Field(
        default=HeadSettings(),
        description="How trained_head fits its linear head on the embedded examples.",
    )
    top_k: int = Field(default=5, gt=0, description="Alternatives returned per text.")
    zero_shot_temperature: float = Field(default=0.05, gt=0)
    instruction: str = "Classify the customer message into exactly one of the labels."
    answer_keys: bool = Field(
        default=False,
        description="generative: where labels share their first token, list a short key per "
        "label and let the model answer the key, so every label is scored in one decode step. "
        "Off, such labels are decoded by name, token by token: small base models answer keys "
        "poorly (Gemma 3 270M on Banking77: 0.06 accuracy by key, 0.43 by name).",
    )
    embed_chunk_size: int = Field(default=256, gt=0)

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[LabelSpec] | None) -> list[LabelSpec] | None:
        problem = _label_set_problem(labels) if labels is not None else None
        if problem:
            raise ValueError(problem)
        return labels

    @field_validator("label_tree")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @model_validator(mode="after")
    def _strategy_is_servable(self) -> ClassificationSettings:
        model_field = MODEL_FIELDS[self.strategy]
        if getattr(self, model_field) is None:
            raise ValueError(f"strategy {self.strategy!r} needs {model_field}")
        if self.strategy in ("knn", "trained_head") and self.examples is None:
            raise ValueError(f"strategy {self.strategy!r} needs examples")
        if (
            self.examples is None
            and self.labels is None
            and self.classifier_model is None
            and self.label_tree is None
        ):
            raise ValueError(
                "give labels, examples, a classifier_model or a label_tree: the label set comes "
                "from one of them"
            )
        if self.label_tree is None and (self.depth is not None or self.min_confidence is not None):
            raise ValueError("depth and min_confidence need a label_tree (the labels are flat)")
        return self


def _label_set_problem(labels: Sequence[LabelSpec]) -> str | None:
    names = [label.name for label in labels]
    if len(names) < 2:
        return "give at least 2 labels"
    if len(set(names)) != len(names):
        return "label names must be unique"
    return None


class LabelScore(BaseModel):
    label: str
    score: float = Field(ge=0, le=1)


@dataclass(frozen=True)
class LabelDistribution:
    """What every strategy computes: one row per text, a probability per label of `names`, each
    row summing to 1. Anything built over a label set (a level of a label tree sums its
    children's columns) reads this one shape."""

    names: list[str]
    probabilities: np.ndarray


class Classification(BaseModel):
    """The result for one text."""

    label: str
    confidence: float = Field(ge=0, le=1)
    top_k: list[LabelScore]
    strategy: Strategy
    path: LabelPath = None
    decoding: ChoiceDecoding | None = Field(
        default=None,
        description="Generative only: one_step when one decode step scored every label (an exact "
        "distribution), multi_step when the label was decoded token by token.",
    )

    @property
    def path_labels(self) -> list[str]:
        """Every node this text was answered at or under: the path, or just the label."""
        return [step.label for step in self.path] if self.path else [self.label]


@dataclass(frozen=True)
class TreeCut:
    """Where a text's path through the label tree stops (neither set: at a leaf)."""

    tree: LabelTree
    depth: int | None = None
    min_confidence: float | None = None


def _rank(
    distribution: LabelDistribution, top_k: int, strategy: Strategy, cut: TreeCut | None = None
) -> list[Classification]:
    """Turns a distribution's rows into ranked classifications; with a tree, the label is where
    each text's path stops. The alternatives are always leaves."""
    names, scores = distribution.names, distribution.probabilities
    order = np.argsort(-scores, axis=1)[:, :top_k]
    paths = (
        cut.tree.decode(names, scores, cut.depth, cut.min_confidence)
        if cut is not None
        else [None] * len(scores)
    )
    results = []
    for row, ranked, steps in zip(scores, order, paths, strict=True):
        # Alternatives with no support at all are noise, not alternatives; the winner always stays.
        kept = [ranked[0]] + [i for i in ranked[1:] if row[i] > 0]
        top = [LabelScore(label=names[i], score=float(min(1.0, max(0.0, row[i])))) for i in kept]
        path = [LabelScore(label=s.name, score=s.probability) for s in steps] if steps else None
        answer = path[-1] if path else top[0]
        results.append(
            Classification(
                label=answer.label,
                confidence=answer.score,
                top_k=top,
                strategy=strategy,
                path=path,
            )
        )
    return results


class VectorScorer(Protocol):
    """Turns query embeddings into a probability per label of `names` (rows sum to 1)."""

    @property
    def names(self) -> list[str]: ...

    def scores(self, queries: np.ndarray) -> np.ndarray: ...


class KnnIndex:
    """Similarity-weighted vote of the k nearest labelled examples; confidence is the vote share."""

    def __init__(self, vectors: np.ndarray, labels: Sequence[str], k: int) -> None:
        self.names = sorted(set(labels))
        position = {name: i for i, name in enumerate(self.names)}
        self._vectors = vectors.astype(np.float32)
        self._label_ids = np.array([position[label] for label in labels])
        self._k = min(k, len(labels))

    def scores(self, queries: np.ndarray) -> np.ndarray:
        similarities = queries @ self._vectors.T
        neighbours = np.argpartition(-similarities, self._k - 1, axis=1)[:, : self._k]
        weights = np.clip(np.take_along_axis(similarities, neighbours, axis=1), 1e-6, None)
        votes = np.zeros((queries.shape[0], len(self.names)), dtype=np.float64)
        rows = np.repeat(np.arange(queries.shape[0]), self._k)
        np.add.at(votes, (rows, self._label_ids[neighbours].ravel()), weights.ravel())
        return votes / votes.sum(axis=1, keepdims=True)


class LabelIndex:
    """Zero-shot: softmax over similarities between a text and each label's embedding."""

    def __init__(self, vectors: np.ndarray, names: Sequence[str], temperature: float) -> None:
        self.names = list(names)
        self._vectors = vectors.astype(np.float32)
        self._temperature = temperature

    def scores(self, queries: np.ndarray) -> np.ndarray:
        logits = (queries @ self._vectors.T) / self._temperature
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)


def generative_prompt(
    instruction: str,
    labels: Sequence[LabelSpec],
    text: str,
    keys: Sequence[str] | None = None,
    examples: Sequence[tuple[str, str]] = (),
) -> str:
    """Static part (instruction, labels, their keys, examples) first and the text last, so prefix
    caching pays. With keys, the model answers with a label's key instead of its name. Examples,
    (text, label name) pairs, show a base model the task: each answered as the model should."""
    names = [label.name for label in labels]
    entries = [
        f"{label.name}: {label.description}" if label.description else label.name
        for label in labels
    ]
    if keys is None:
        lines = [instruction, "Labels:", *(f"- {entry}" for entry in entries)]
    else:
        lines = [instruction, "Labels (answer with the key before the label):"]
        lines += [f"{key}. {entry}" for key, entry in zip(keys, entries, strict=True)]
    answers = dict(zip(names, keys or names, strict=True))
    shots = [f"Text: {shot}\n{LABEL_CUE} {answers[label]}" for shot, label in examples]
    return "\n\n".join(["\n".join(lines), *shots, f"Text: {text}\n{LABEL_CUE}"])


class Classifier:
    """Holds the loaded indexes and answers `classify` with the configured or requested strategy."""

    def __init__(
        self,
        settings: ClassificationSettings,
        embedder: EmbeddingEngine | None,
        generator: GenerativeEngine | None,
        cache: EmbeddingCache | None = None,
        sequence_classifier: ClassifierEngine | None = None,
    ) -> None:
        self.settings = settings
        self._embedder = embedder
        self._generator = generator
        self._sequence_classifier = sequence_classifier
        self._cache = cache
        self._knn: KnnIndex | None = None
        self._head: LinearHead | None = None
        self._class_labels: list[str] = []
        self._labels: list[LabelSpec] = list(settings.labels or [])
        self.tree: LabelTree | None = None
        self._label_index: LabelIndex | None = None
        # For the label sets asked for last: their index, and the keys the generator asks for
        # (the configured set's included). Requests bringing one new set compute it once.
        self._ad_hoc = alru_cache(maxsize=AD_HOC_LABEL_SETS_KEPT)(self._build_label_index)
        self._keys = alru_cache(maxsize=AD_HOC_LABEL_SETS_KEPT)(self._choice_keys)

    @property
    def strategies(self) -> list[Strategy]:
        available: list[Strategy] = []
        if self._knn is not None:
            available.append("knn")
        if self._embedder is not None:
            available.append("zero_shot")
        if self._generator is not None:
            available.append("generative")
        if self._head is not None:
            available.append("trained_head")
        if self._sequence_classifier is not None:
            available.append("classifier")
        return available

    @property
    def labels(self) -> list[str]:
        return [label.name for label in self._labels]

    async def load(self) -> None:
        """Embeds examples (or reads them from the cache), fits the head on them, reads the
        classifier's labels and embeds the label set; call once."""
        if self.settings.examples is not None:
            examples = load_examples(self.settings.examples)
            if not self._labels:
                self._labels = [LabelSpec(name=name) for name in sorted(set(examples.labels))]
            if self._embedder is not None:
                vectors = self._cached(examples)
                if vectors is None:
                    vectors = await self._embed(examples.texts)
                    if self._cache is not None:
                        self._cache.put(
                            self._embedder.identity, examples, self.settings.examples, vectors
                        )
                self._knn = KnnIndex(vectors, examples.labels, self.settings.k)
                if len(set(examples.labels)) >= 2:
                    self._head = await asyncio.to_thread(self._fitted_head, examples, vectors)
        if self._sequence_classifier is not None:
            self._class_labels = await self._checkpoint_labels(self._sequence_classifier)
            if not self._labels:
                self._labels = [LabelSpec(name=name) for name in self._class_labels]
        if self.settings.label_tree is not None:
            self.tree, _ = load_label_tree(self.settings.label_tree)
            self._labels = self._labels_of_tree(self.tree)
        if self._embedder is not None:
            self._label_index = await self._build_label_index(self._labels)

    def _labels_of_tree(self, tree: LabelTree) -> list[LabelSpec]:
        """The label set with the tree's leaf descriptions where it has none of its own; the
        tree's leaves must be exactly the labels every served strategy answers."""
        if not self._labels:
            return [
                LabelSpec(name=leaf, description=tree.description(leaf)) for leaf in tree.leaves
            ]
        tree.check_leaves(self.labels, "the label set")
        if self._class_labels:
            tree.check_leaves(self._class_labels, "classifier_model's id2label")
        return [
            label
            if label.description
            else LabelSpec(name=label.name, description=tree.description(label.name))
            for label in self._labels
        ]

    def _fitted_head(self, examples: LabelledExamples, vectors: np.ndarray) -> LinearHead:
        """Blocks for the fit (seconds), unless the cache holds this head already."""
        assert self._embedder is not None and self.settings.examples is not None
        settings = self.settings.head

        def fit() -> LinearHead:
            return fit_linear_head(vectors, examples.texts, examples.labels, settings)

        if self._cache is None:
            return fit()
        return self._cache.head(
            self._embedder.identity, examples, self.settings.examples, settings, fit
        )

    @staticmethod
    async def _checkpoint_labels(engine: ClassifierEngine) -> list[str]:
        labels = await engine.class_labels()
        problem = _label_set_problem([LabelSpec(name=label) for label in labels])
        if problem:
            raise InvalidRequestError(
                f"classifier_model: model {engine.name!r} has labels {labels} in its id2label; "
                f"{problem}",
                "classifier_model",
            )
        return labels

    def _cached(self, examples: LabelledExamples) -> np.ndarray | None:
        if self._cache is None or self._embedder is None or self.settings.examples is None:
            return None
        return self._cache.get(self._embedder.identity, examples, self.settings.examples)

    async def _embed(self, texts: Sequence[str]) -> np.ndarray:
        assert self._embedder is not None
        size = self.settings.embed_chunk_size
        chunks = [texts[start : start + size] for start in range(0, len(texts), size)]
        parts = await asyncio.gather(*(self._embedder.embed(chunk) for chunk in chunks))
        return np.concatenate(parts, axis=0)

    async def _build_label_index(self, labels: Sequence[LabelSpec]) -> LabelIndex:
        vectors = await self._embed([label.embedding_text for label in labels])
        names = [label.name for label in labels]
        return LabelIndex(vectors, names, self.settings.zero_shot_temperature)

    async def _ad_hoc_index(self, labels: Sequence[LabelSpec]) -> LabelIndex:
        return await self._ad_hoc(tuple(labels))

    async def _choice_keys(self, names: tuple[str, ...]) -> list[str] | None:
        assert self._generator is not None
        return await self._generator.choice_keys(names, LABEL_CUE)

    def resolve_strategy(
        self, strategy: Strategy | None, labels: Sequence[LabelSpec] | None
    ) -> Strategy:
        """The strategy a request runs: ad-hoc labels imply zero_shot unless generative is asked
        (or configured)."""
        configured = self.settings.strategy
        chosen = strategy or (
            "zero_shot" if labels and configured in FIXED_LABEL_STRATEGIES else configured
        )
        if chosen not in self.strategies:
            raise InvalidRequestError(
                f"strategy {chosen!r} is not served by this deployment; "
                f"available: {', '.join(self.strategies)}",
                "strategy",
            )
        if labels and chosen in FIXED_LABEL_STRATEGIES:
            raise InvalidRequestError(
                f"ad-hoc labels work with strategy 'zero_shot' or 'generative', not {chosen!r} "
                "(its labels are fixed by the configured examples or checkpoint)",
                "labels",
            )
        return chosen

    def tree_cut(
        self,
        labels: Sequence[LabelSpec] | None,
        depth: int | None = None,
        min_confidence: float | None = None,
    ) -> TreeCut | None:
        """Where paths stop for a request: its own depth and min_confidence, else the
        configured ones; no tree (and no path) for ad-hoc labels."""
        asked = "depth" if depth is not None else "min_confidence"
        if (depth is not None or min_confidence is not None) and (self.tree is None or labels):
            reason = (
                "this deployment's labels are flat (configure classification.label_tree)"
                if self.tree is None
                else "ad-hoc labels are flat; leave out labels to use the configured tree"
            )
            raise InvalidRequestError(f"{asked}: {reason}", asked)
        if self.tree is None or labels:
            return None
        if depth is not None and depth > self.tree.depth:
            raise InvalidRequestError(
                f"depth: {depth} is deeper than the label tree ({self.tree.depth} levels)", "depth"
            )
        return TreeCut(
            self.tree,
            depth if depth is not None else self.settings.depth,
            min_confidence if min_confidence is not None else self.settings.min_confidence,
        )

    async def classify(
        self,
        texts: Sequence[str],
        strategy: Strategy | None = None,
        labels: Sequence[LabelSpec] | None = None,
        depth: int | None = None,
        min_confidence: float | None = None,
    ) -> list[Classification]:
        """Classifies texts in order; identical texts are computed once."""
        problem = _label_set_problem(labels) if labels else None
        if problem:
            raise InvalidRequestError(f"labels: {problem}", "labels")
        chosen = self.resolve_strategy(strategy, labels)
        cut = self.tree_cut(labels, depth, min_confidence)
        unique = list(dict.fromkeys(texts))
        results = await self._run(chosen, unique, labels, cut)
        by_text = dict(zip(unique, results, strict=True))
        return [by_text[text] for text in texts]

    async def _run(
        self,
        strategy: Strategy,
        texts: list[str],
        labels: Sequence[LabelSpec] | None,
        cut: TreeCut | None,
    ) -> list[Classification]:
        if strategy == "generative":
            return await self._generative(texts, list(labels or self._labels), cut)
        if strategy == "classifier":
            assert self._sequence_classifier is not None
            logits = await self._sequence_classifier.classify(texts)
            distribution = LabelDistribution(self._class_labels, softmax(logits))
        else:
            scorer = await self._vector_scorer(strategy, labels)
            distribution = LabelDistribution(scorer.names, scorer.scores(await self._embed(texts)))
        return _rank(distribution, self.settings.top_k, strategy, cut)

    async def _vector_scorer(
        self, strategy: Strategy, labels: Sequence[LabelSpec] | None
    ) -> VectorScorer:
        scorer: VectorScorer | None
        if strategy == "knn":
            scorer = self._knn
        elif strategy == "trained_head":
            scorer = self._head
        else:
            scorer = await self._ad_hoc_index(labels) if labels else self._label_index
        assert scorer is not None
        return scorer

    async def _generative(
        self, texts: list[str], labels: list[LabelSpec], cut: TreeCut | None
    ) -> list[Classification]:
        generator = self._generator
        assert generator is not None
        names = [label.name for label in labels]
        keys = await self._keys(tuple(names)) if self.settings.answer_keys else None
        instruction = self.settings.instruction
        prompts = [generative_prompt(instruction, labels, text, keys) for text in texts]
        choices = await generator.choose(prompts, names, keys)
        scores = np.array(
            [[choice.probabilities.get(name, 0.0) for name in names] for choice in choices]
        )
        ranked = _rank(LabelDistribution(names, scores), self.settings.top_k, "generative", cut)
        return [
            result.model_copy(update={"decoding": choice.decoding})
            for result, choice in zip(ranked, choices, strict=True)
        ]


class ClassificationOptions(BaseModel):
    """What one request may choose: the strategy, an ad-hoc label set (zero-shot on the fly) and,
    with a label tree, where paths stop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy | None = None
    labels: list[LabelSpec] | None = Field(default=None, max_length=MAX_AD_HOC_LABELS)
    depth: TreeDepth = None
    min_confidence: MinConfidence = None


class ClassificationCapability(Capability[ClassificationSettings, Classification]):
    """The root of the DAG: every other built-in builds on its label."""

    name = "classification"
    settings_model = ClassificationSettings
    output_model = Classification
    options_model = ClassificationOptions

    @classmethod
    def check_files(cls, settings: ClassificationSettings) -> None:
        examples = load_examples(settings.examples) if settings.examples is not None else None
        if settings.label_tree is not None:
            tree, _ = load_label_tree(settings.label_tree)
            if settings.labels is not None:
                tree.check_leaves([label.name for label in settings.labels], "labels")
            elif examples is not None:
                tree.check_leaves(sorted(set(examples.labels)), "examples")

    async def load(self) -> None:
        settings = self.settings
        resources = self.resources
        cache_dir = resources.cache_dir
        classifier = Classifier(
            settings,
            embedder=resources.embedder(settings.embedding_model, "classification.embedding_model")
            if settings.embedding_model
            else None,
            generator=resources.generator(
                settings.generative_model, "classification.generative_model"
            )
            if settings.generative_model
            else None,
            cache=EmbeddingCache(cache_dir / "embeddings") if cache_dir is not None else None,
            sequence_classifier=resources.classifier(
                settings.classifier_model, "classification.classifier_model"
            )
            if settings.classifier_model
            else None,
        )
        await classifier.load()
        if settings.examples is not None:
            self.track_file(settings.examples.path.read_bytes())
        if settings.label_tree is not None:
            self.track_file(settings.label_tree.read_bytes())
        self.classifier = classifier

    async def run(self, texts: Sequence[str], context: RunContext) -> list[Classification]:
        options = context.options
        assert isinstance(options, ClassificationOptions)
        return await self.classifier.classify(
            texts, options.strategy, options.labels, options.depth, options.min_confidence
        )
