"""What an engine's chat and embeddings entry points take and give back.

Plain data, no Ray and no vLLM, so the engine, its deployment and client, the OpenAI endpoints and
the batch runner all import it cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class JsonOutput(BaseModel):
    """Constrains a reply to JSON: any object, or one valid against `json_schema` when set."""

    json_schema: dict[str, Any] | None = None


class ChatCall(BaseModel):
    """One conversation to continue, with its sampling settings."""

    messages: list[ChatMessage]
    max_tokens: int | None = None  # None: up to the model's context length
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = []
    seed: int | None = None
    json_output: JsonOutput | None = None


class ChatOutput(BaseModel):
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Rejection(BaseModel):
    """An engine refused one call for the caller's fault (prompt too long, no chat template, a
    schema it cannot compile); returned rather than raised so the rest of its batch still runs."""

    message: str


@dataclass(frozen=True)
class Embeddings:
    """L2-normalised rows (len(texts) x dim, float32) and each text's prompt token count."""

    vectors: np.ndarray
    prompt_tokens: list[int]

    def split(self, sizes: Sequence[int]) -> list[Embeddings]:
        """Consecutive parts of `sizes` rows each: texts of several callers embedded together."""
        ends = list(accumulate(sizes))
        return [
            Embeddings(self.vectors[start:end], self.prompt_tokens[start:end])
            for start, end in zip([0, *ends[:-1]], ends, strict=True)
        ]
