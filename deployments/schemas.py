"""Pydantic models of the HTTP API: what `/v1/classify` and `/v1/models` accept and answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationInfo, model_validator

from capabilities.classification import LabelScore, LabelSpec, Strategy
from deployments.config import LimitsConfig

MAX_AD_HOC_LABELS = 1000


class ClassifyItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: StrictStr | None = Field(default=None, max_length=256)
    text: StrictStr = Field(min_length=1)


class ClassifyRequest(BaseModel):
    """Either `texts` or `items`; `labels` classifies against an ad-hoc label set (zero-shot)."""

    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] | None = None
    items: list[ClassifyItem] | None = None
    labels: list[LabelSpec] | None = Field(default=None, max_length=MAX_AD_HOC_LABELS)
    strategy: Strategy | None = None

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> ClassifyRequest:
        if (self.texts is None) == (self.items is None):
            raise ValueError("give exactly one of 'texts' (a list of strings) or 'items'")
        field = "texts" if self.texts is not None else "items"
        texts = self.all_texts()
        if not texts:
            raise ValueError(f"'{field}' is empty; send at least one text")
        limits: LimitsConfig = (info.context or {}).get("limits", LimitsConfig())
        if len(texts) > limits.max_items_per_request:
            raise ValueError(
                f"'{field}' has {len(texts)} entries; the limit is "
                f"{limits.max_items_per_request} per request (split it, or use /v1/batches)"
            )
        for index, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"{field}[{index}] is empty or whitespace")
            if len(text) > limits.max_text_chars:
                raise ValueError(
                    f"{field}[{index}] has {len(text)} characters; the limit is "
                    f"{limits.max_text_chars}"
                )
        return self

    def all_texts(self) -> list[str]:
        if self.texts is not None:
            return list(self.texts)
        return [item.text for item in self.items or []]

    def all_ids(self) -> list[str | None]:
        if self.items is not None:
            return [item.id for item in self.items]
        return [None] * len(self.texts or [])


class ItemResult(BaseModel):
    index: int
    id: str | None = None
    label: str
    confidence: float = Field(ge=0, le=1)
    top_k: list[LabelScore]


class ClassifyResponse(BaseModel):
    id: str = Field(description="The request id, also in the X-Request-ID header.")
    object: Literal["classification.list"] = "classification.list"
    model: str
    strategy: Strategy
    results: list[ItemResult]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: Literal["capserve"] = "capserve"
    runner: Literal["generate", "pooling"]
    root: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
