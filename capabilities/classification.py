"""Classification: a label with a confidence per text, by knn, zero-shot or generative strategy."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

import numpy as np
from async_lru import alru_cache
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from capabilities.base import Capability, RunContext
from capabilities.engine import ChoiceDecoding, EmbeddingEngine, GenerativeEngine
from capabilities.errors import InvalidRequestError
from capabilities.examples import EmbeddingCache, ExamplesSource, LabelledExamples, load_examples

Strategy = Literal["knn", "zero_shot", "generative"]
STRATEGIES: tuple[Strategy, ...] = ("knn", "zero_shot", "generative")
AD_HOC_LABEL_SETS_KEPT = 64
MAX_AD_HOC_LABELS = 1000
LABEL_CUE = "Label:"
"""The last line of a generative prompt; the model answers after it."""


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
        default=None, description="Pooling model for knn/zero_shot."
    )
    generative_model: str | None = Field(default=None, description="Generate model for generative.")
    examples: ExamplesSource | None = None
    labels: list[LabelSpec] | None = Field(
        default=None, description="Label set; defaults to the distinct labels of `examples`."
    )
    k: int = Field(default=10, gt=0, description="Neighbours that vote in knn.")
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

    @model_validator(mode="after")
    def _strategy_is_servable(self) -> ClassificationSettings:
        if self.strategy in ("knn", "zero_shot") and self.embedding_model is None:
            raise ValueError(f"strategy {self.strategy!r} needs embedding_model")
        if self.strategy == "generative" and self.generative_model is None:
            raise ValueError("strategy 'generative' needs generative_model")
        if self.strategy == "knn" and self.examples is None:
            raise ValueError("strategy 'knn' needs examples")
        if self.examples is None and self.labels is None:
            raise ValueError("give labels or examples: the label set comes from one of them")
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


class Classification(BaseModel):
    """The result for one text."""

    label: str
    confidence: float = Field(ge=0, le=1)
    top_k: list[LabelScore]
    strategy: Strategy
    decoding: ChoiceDecoding | None = Field(
        default=None,
        description="Generative only: one_step when one decode step scored every label (an exact "
        "distribution), multi_step when the label was decoded token by token.",
    )


def _rank(
    scores: np.ndarray, names: Sequence[str], top_k: int, strategy: Strategy
) -> list[Classification]:
    """Turns rows of per-label scores (each summing to 1) into ranked classifications."""
    order = np.argsort(-scores, axis=1)[:, :top_k]
    results = []
    for row, ranked in zip(scores, order, strict=True):
        # Alternatives with no support at all are noise, not alternatives; the winner always stays.
        kept = [ranked[0]] + [i for i in ranked[1:] if row[i] > 0]
        top = [LabelScore(label=names[i], score=float(min(1.0, max(0.0, row[i])))) for i in kept]
        results.append(
            Classification(
                label=top[0].label, confidence=top[0].score, top_k=top, strategy=strategy
            )
        )
    return results


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
    entries = [f"{l.name}: {l.description}" if l.description else l.name for l in labels]
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
    ) -> None:
        self.settings = settings
        self._embedder = embedder
        self._generator = generator
        self._cache = cache
        self._knn: KnnIndex | None = None
        self._labels: list[LabelSpec] = list(settings.labels or [])
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
        return available

    @property
    def labels(self) -> list[str]:
        return [label.name for label in self._labels]

    async def load(self) -> None:
        """Embeds examples (or reads them from the cache) and the label set; call once."""
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
        if self._embedder is not None:
            self._label_index = await self._build_label_index(self._labels)

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
        return LabelIndex(vectors, [l.name for l in labels], self.settings.zero_shot_temperature)

    async def _ad_hoc_index(self, labels: Sequence[LabelSpec]) -> LabelIndex:
        return await self._ad_hoc(tuple(labels))

    async def _choice_keys(self, names: tuple[str, ...]) -> list[str] | None:
        assert self._generator is not None
        return await self._generator.choice_keys(names, LABEL_CUE)

    def resolve_strategy(
        self, strategy: Strategy | None, labels: Sequence[LabelSpec] | None
    ) -> Strategy:
        """The strategy a request runs: ad-hoc labels imply zero_shot unless generative is asked."""
        chosen = strategy or ("zero_shot" if labels and self.settings.strategy == "knn" else None)
        chosen = chosen or self.settings.strategy
        if chosen not in self.strategies:
            raise InvalidRequestError(
                f"strategy {chosen!r} is not served by this deployment; "
                f"available: {', '.join(self.strategies)}",
                "strategy",
            )
        if labels and chosen == "knn":
            raise InvalidRequestError(
                "ad-hoc labels work with strategy 'zero_shot' or 'generative', not 'knn' "
                "(knn votes over the configured examples)",
                "labels",
            )
        return chosen

    async def classify(
        self,
        texts: Sequence[str],
        strategy: Strategy | None = None,
        labels: Sequence[LabelSpec] | None = None,
    ) -> list[Classification]:
        """Classifies texts in order; identical texts are computed once."""
        problem = _label_set_problem(labels) if labels else None
        if problem:
            raise InvalidRequestError(f"labels: {problem}", "labels")
        chosen = self.resolve_strategy(strategy, labels)
        unique = list(dict.fromkeys(texts))
        results = await self._run(chosen, unique, labels)
        by_text = dict(zip(unique, results, strict=True))
        return [by_text[text] for text in texts]

    async def _run(
        self, strategy: Strategy, texts: list[str], labels: Sequence[LabelSpec] | None
    ) -> list[Classification]:
        top_k = self.settings.top_k
        if strategy == "generative":
            return await self._generative(texts, list(labels or self._labels))
        queries = await self._embed(texts)
        if strategy == "knn":
            assert self._knn is not None
            return _rank(self._knn.scores(queries), self._knn.names, top_k, strategy)
        index = await self._ad_hoc_index(labels) if labels else self._label_index
        assert index is not None
        return _rank(index.scores(queries), index.names, top_k, strategy)

    async def _generative(self, texts: list[str], labels: list[LabelSpec]) -> list[Classification]:
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
        ranked = _rank(scores, names, self.settings.top_k, "generative")
        return [
            result.model_copy(update={"decoding": choice.decoding})
            for result, choice in zip(ranked, choices, strict=True)
        ]


class ClassificationOptions(BaseModel):
    """What one request may choose: the strategy, and an ad-hoc label set (zero-shot on the fly)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy | None = None
    labels: list[LabelSpec] | None = Field(default=None, max_length=MAX_AD_HOC_LABELS)


class ClassificationCapability(Capability[ClassificationSettings, Classification]):
    """The root of the DAG: every other built-in builds on its label."""

    name = "classification"
    settings_model = ClassificationSettings
    output_model = Classification
    options_model = ClassificationOptions

    @classmethod
    def check_files(cls, settings: ClassificationSettings) -> None:
        if settings.examples is not None:
            load_examples(settings.examples)

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
        )
        await classifier.load()
        if settings.examples is not None:
            self.track_file(settings.examples.path.read_bytes())
        self.classifier = classifier

    async def run(self, texts: Sequence[str], context: RunContext) -> list[Classification]:
        options = context.options
        assert isinstance(options, ClassificationOptions)
        return await self.classifier.classify(texts, options.strategy, options.labels)
