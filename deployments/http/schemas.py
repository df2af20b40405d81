"""Pydantic models of the HTTP API: what `/v1/classify` and `/v1/models` accept and answer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictStr,
    ValidationInfo,
    model_serializer,
    model_validator,
)

from capabilities.classification import (
    MAX_AD_HOC_LABELS,
    ClassificationOptions,
    LabelScore,
    LabelSpec,
    Strategy,
)
from capabilities.engine import ChoiceDecoding
from deployments.config import LimitsConfig
from deployments.http.rate_limit import Usage

CapabilityNames = list[StrictStr]


class ClassifyItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: StrictStr | None = Field(default=None, max_length=256)
    text: StrictStr = Field(min_length=1)
    capabilities: CapabilityNames | None = Field(
        default=None, min_length=1, description="What this item gets; overrides the request's."
    )


class ClassifyRequest(BaseModel):
    """Either `texts` or `items`; `labels` classifies against an ad-hoc label set (zero-shot)."""

    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] | None = None
    items: list[ClassifyItem] | None = None
    capabilities: CapabilityNames | None = Field(
        default=None,
        min_length=1,
        description="What every item gets unless it names its own; the deployment's "
        "default_capabilities otherwise.",
    )
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
        if self.labels is not None and len(self.labels) > limits.max_labels_per_request:
            raise ValueError(
                f"'labels' has {len(self.labels)} entries; the limit is "
                f"{limits.max_labels_per_request} per request (send fewer labels)"
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

    def usage(self) -> Usage:
        """One text per item and per ad-hoc label: a new label set is embedded (or prompted)."""
        return Usage(texts=len(self.all_texts()) + len(self.labels or []))

    def all_ids(self) -> list[str | None]:
        if self.items is not None:
            return [item.id for item in self.items]
        return [None] * len(self.texts or [])

    def requested_capabilities(self, default: list[str]) -> list[list[str]]:
        fallback = self.capabilities or default
        if self.items is None:
            return [fallback] * len(self.texts or [])
        return [item.capabilities or fallback for item in self.items]

    def options(self) -> dict[str, dict[str, Any]]:
        """Per-capability options, in the runners' wire form."""
        classification = ClassificationOptions(strategy=self.strategy, labels=self.labels)
        return {"classification": classification.model_dump(mode="json", exclude_none=True)}


class ItemResult(BaseModel):
    """One item's answer: classification fields when it asked for classification, and every
    other capability it asked for under that capability's name."""

    # Its serializer returns a plain dict; the fields are the schema of what it answers.
    model_config = ConfigDict(extra="allow", json_schema_mode_override="validation")

    index: int
    id: str | None = None
    label: str | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)
    top_k: list[LabelScore] | None = None
    decoding: ChoiceDecoding | None = Field(
        default=None,
        description="Generative classification only: one_step when one decode step scored every "
        "label (an exact distribution), multi_step when the label was decoded token by token.",
    )

    @model_serializer(mode="wrap")
    def _only_what_was_asked(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Classification fields are absent, not null, for items that did not ask for them.
        dumped = handler(self)
        return {key: value for key, value in dumped.items() if key == "id" or value is not None}


class ClassifyResponse(BaseModel):
    id: str = Field(description="The request id, also in the X-Request-ID header.")
    object: Literal["classification.list"] = "classification.list"
    model: str | None = Field(default=None, description="The model classification ran on.")
    strategy: Strategy | None = None
    capability_versions: dict[str, str] = Field(
        description="Settings version of each capability that ran; changes on every reload."
    )
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


class CapabilityCard(BaseModel):
    id: str
    object: Literal["capability"] = "capability"
    depends_on: list[str]
    default: bool = Field(description="Whether items get it when they name no capabilities.")
    settings_version: str
    settings: dict[str, Any]


class CapabilityList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CapabilityCard]
    levels: list[list[str]] = Field(
        description="Capabilities in dependency order; each level's "
        "members are independent of each other and run concurrently."
    )
    limits: LimitsConfig = Field(
        description="What one request may hold: a client splits its input by these."
    )


class HealthStatus(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyStatus(BaseModel):
    status: Literal["ready"] = "ready"
    engines: list[str]
    capabilities: list[str]
    checked_at: float = Field(
        description="Unix time of the check this answer comes from: answers are reused for a "
        "moment, so probes cannot become load."
    )
