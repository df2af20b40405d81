"""The engine protocol capabilities call; the Serve engine deployment and test fakes honour it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

ChoiceDecoding = Literal["one_step", "multi_step"]


class ChoiceResult(BaseModel):
    """The label an engine picked under a structured-output choice, with a distribution over all."""

    choice: str
    probabilities: dict[str, float] = Field(
        description=(
            "Normalised probability per allowed choice, from the engine's log-probabilities."
        )
    )
    decoding: ChoiceDecoding = Field(
        description="one_step: one decode step over each choice's own first token, so the "
        "distribution is the model's, exactly; multi_step: the choice was decoded token by token "
        "and the distribution pieced together from each step's top log-probabilities."
    )


class EmbeddingEngine(Protocol):
    name: str
    identity: str
    """What the outputs depend on (weights, dtype, max length...): caches key on it, not on
    `name`, so new weights under an old name never meet the old weights' vectors."""

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Returns one L2-normalised row per text (shape: len(texts) x dim, float32)."""
        ...


class ClassifierEngine(Protocol):
    """A sequence-classification checkpoint (e.g. `BertForSequenceClassification`)."""

    name: str
    identity: str
    """As `EmbeddingEngine.identity`."""

    async def class_labels(self) -> list[str]:
        """The checkpoint's label names (its `id2label`), in the order of `classify`'s columns."""
        ...

    async def classify(self, texts: Sequence[str]) -> np.ndarray:
        """Returns the classification head's logits, one row per text (len(texts) x labels)."""
        ...


class GenerativeEngine(Protocol):
    """`choose` prompts end with a cue line such as `Label:`; the model answers after one space,
    with a choice or, where keys are given, with the choice's key."""

    name: str
    identity: str
    """As `EmbeddingEngine.identity`."""

    async def choice_keys(self, choices: Sequence[str], cue: str) -> list[str] | None:
        """Short keys, one per choice, for prompts ending in `cue` to list next to the choices
        and `choose` to answer with, where the choices themselves cannot be told apart by their
        first token; None where they can, or where too few keys exist (`choose` then decodes the
        choices token by token)."""
        ...

    async def choose(
        self, prompts: Sequence[str], choices: Sequence[str], keys: Sequence[str] | None = None
    ) -> list[ChoiceResult]:
        """Picks one of `choices` per prompt by constrained decoding; with `keys`, the model
        answers with `keys[i]` for `choices[i]`, and results still name the choices."""
        ...

    async def generate_json(
        self, prompts: Sequence[str], json_schema: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Generates one JSON object per prompt that validates against `json_schema`."""
        ...
