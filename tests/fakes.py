"""A deterministic fake engine honouring the engine protocol (and, served by `EngineDeployment`,
the deployment's), and a clock set by hand; for unit tests of logic only."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from capabilities.classification import Classification, LabelScore
from capabilities.engine import ChoiceResult
from capabilities.errors import InvalidRequestError
from capabilities.priority import DEFAULT_PRIORITY, Priority
from deployments.config import ModelConfig
from deployments.engine.calls import ChatCall, ChatOutput, Embeddings, Rejection
from deployments.engine.protocol import EngineClass, TokenCounter

DIMENSIONS = 64


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


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
        self.healthy = True
        self.shut_down = False
        self.readied = 0

    async def embed(
        self, texts: Sequence[str], priority: Priority = DEFAULT_PRIORITY
    ) -> np.ndarray:
        self.embedded.extend(texts)
        rows = []
        for text in texts:
            words = _words(text) or ["<empty>"]
            vector = np.sum([_word_vector(word) for word in words], axis=0)
            rows.append(vector / np.linalg.norm(vector))
        return np.array(rows, dtype=np.float32)

    async def choice_keys(self, choices: Sequence[str], cue: str) -> list[str] | None:
        self.keys_asked.append((list(choices), cue))
        return [f"K{i}" for i in range(len(choices))] if self.keyed else None

    async def choose(
        self,
        prompts: Sequence[str],
        choices: Sequence[str],
        keys: Sequence[str] | None = None,
        priority: Priority = DEFAULT_PRIORITY,
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
        self,
        prompts: Sequence[str],
        json_schema: dict[str, Any],
        priority: Priority = DEFAULT_PRIORITY,
    ) -> list[dict[str, Any]]:
        return [{} for _ in prompts]

    async def embeddings(
        self, texts: Sequence[str], priority: Priority = DEFAULT_PRIORITY
    ) -> Embeddings:
        return Embeddings(await self.embed(texts, priority), [len(_words(t)) for t in texts])

    async def classify(
        self, texts: Sequence[str], priority: Priority = DEFAULT_PRIORITY
    ) -> np.ndarray:
        raise InvalidRequestError(f"model {self.name!r} cannot classify", "classifier_model")

    async def class_labels(self) -> list[str]:
        raise InvalidRequestError(f"model {self.name!r} cannot classify", "classifier_model")

    async def chat(
        self, calls: Sequence[ChatCall], priority: Priority = DEFAULT_PRIORITY
    ) -> list[ChatOutput | Rejection]:
        """Echoes each conversation's last message."""
        return [
            ChatOutput(
                text=call.messages[-1].content,
                finish_reason="stop",
                prompt_tokens=sum(len(_words(m.content)) for m in call.messages),
                completion_tokens=len(_words(call.messages[-1].content)),
            )
            for call in calls
        ]

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError(f"engine {self.name!r} is down")

    async def ready(self) -> None:
        await self.check_health()
        self.readied += 1

    def shutdown(self) -> None:
        self.shut_down = True


def serving(engine: FakeEngine) -> EngineClass:
    """An `engine_cls` for `EngineDeployment`: its replica serves `engine`."""

    def build(config: ModelConfig, count_tokens: TokenCounter) -> FakeEngine:
        return engine

    return build


class FakeClassifierEngine:
    """A sequence classifier whose logit for a label counts the label's words in the text."""

    def __init__(self, labels: Sequence[str], name: str = "fake-classifier") -> None:
        self.name = name
        self.identity = f"{name}@fake-weights"
        self.labels = list(labels)
        self.classified: list[str] = []

    async def class_labels(self) -> list[str]:
        return list(self.labels)

    async def classify(
        self, texts: Sequence[str], priority: Priority = DEFAULT_PRIORITY
    ) -> np.ndarray:
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
