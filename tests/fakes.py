"""A deterministic fake engine honouring the engine protocol, and a clock set by hand; for unit
tests of logic only."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from capabilities.classification import Classification, LabelScore
from capabilities.engine import ChoiceResult

DIMENSIONS = 64


def _word_vector(word: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).standard_normal(DIMENSIONS)


class FakeEngine:
    """Bag-of-words embeddings (shared words => similar vectors); `choose` prefers word overlap.
    With `keyed`, it asks for keys K0, K1, ... for every label set, and records what it got."""

    def __init__(self, name: str = "fake", keyed: bool = False, identity: str = "") -> None:
        self.name = name
        self.identity = identity or f"{name}@fake-weights"
        self.keyed = keyed
        self.embedded: list[str] = []
        self.chosen: list[str] = []
        self.keys_asked: list[tuple[list[str], str]] = []
        self.keys_given: list[list[str] | None] = []

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded.extend(texts)
        rows = []
        for text in texts:
            words = re.findall(r"[a-z]+", text.lower()) or ["<empty>"]
            vector = np.sum([_word_vector(word) for word in words], axis=0)
            rows.append(vector / np.linalg.norm(vector))
        return np.array(rows, dtype=np.float32)

    async def choice_keys(self, choices: Sequence[str], cue: str) -> list[str] | None:
        self.keys_asked.append((list(choices), cue))
        return [f"K{i}" for i in range(len(choices))] if self.keyed else None

    async def choose(
        self, prompts: Sequence[str], choices: Sequence[str], keys: Sequence[str] | None = None
    ) -> list[ChoiceResult]:
        self.chosen.extend(prompts)
        self.keys_given.append(None if keys is None else list(keys))
        results = []
        for prompt in prompts:
            text = prompt.rsplit("Text: ", 1)[-1].lower()
            overlap = np.array(
                [
                    1.0 + sum(part in text for part in choice.lower().split("_"))
                    for choice in choices
                ]
            )
            probabilities = overlap / overlap.sum()
            best = choices[int(np.argmax(probabilities))]
            results.append(
                ChoiceResult(
                    choice=best,
                    probabilities={
                        c: float(p) for c, p in zip(choices, probabilities, strict=True)
                    },
                    decoding="one_step",
                )
            )
        return results

    async def generate_json(
        self, prompts: Sequence[str], json_schema: dict[str, Any]
    ) -> list[dict[str, Any]]:
        return [{} for _ in prompts]


class FakeClassifierEngine:
    """A sequence classifier whose logit for a label counts the label's words in the text."""

    def __init__(self, labels: Sequence[str], name: str = "fake-classifier") -> None:
        self.name = name
        self.identity = f"{name}@fake-weights"
        self.labels = list(labels)
        self.classified: list[str] = []

    async def class_labels(self) -> list[str]:
        return list(self.labels)

    async def classify(self, texts: Sequence[str]) -> np.ndarray:
        self.classified.extend(texts)
        return np.array(
            [
                [
                    float(sum(word in text.lower() for word in label.split("_")))
                    for label in self.labels
                ]
                for text in texts
            ]
        )


def classified(label: str, confidence: float = 0.9) -> Classification:
    """A knn classification of one text, as the classification capability hands it to dependents."""
    return Classification(
        label=label,
        confidence=confidence,
        top_k=[LabelScore(label=label, score=confidence)],
        strategy="knn",
    )


class FakeClock:
    """A clock that moves only when a test sets `now`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
