"""The engine protocol capabilities call; the Serve engine deployment and test fakes honour it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, Field


class ChoiceResult(BaseModel):
    """The label an engine picked under a structured-output choice, with a distribution over all."""

    choice: str
    probabilities: dict[str, float] = Field(
        description="Normalised probability per allowed choice, from the engine's log-probabilities."
    )


class EmbeddingEngine(Protocol):
    name: str

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Returns one L2-normalised row per text (shape: len(texts) x dim, float32)."""
        ...


class GenerativeEngine(Protocol):
    name: str

    async def choose(self, prompts: Sequence[str], choices: Sequence[str]) -> list[ChoiceResult]:
        """Picks one of `choices` per prompt by constrained decoding."""
        ...

    async def generate_json(
        self, prompts: Sequence[str], json_schema: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Generates one JSON object per prompt that validates against `json_schema`."""
        ...
