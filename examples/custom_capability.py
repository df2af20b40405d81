"""An example capability: decides, per text, whether a ticket goes straight to a person.

A ticket escalates when its predicted label is one that always does (a security incident), or
when it reads like an upset customer: its embedding is close to one of the `upset_examples`.
It builds on classification (`depends_on`), so every text it gets arrives with its label, and
embeds its texts with the same model classification used, whose engine client answers texts it
embedded moments ago without another engine call.

    {"escalate": true, "reason": "tone", "tone": 0.4752}

Name it in the config (run from the project root so `examples` is importable), as
`examples/serve_config.yaml` does:

    capabilities:
      - name: escalation
        import_path: examples.custom_capability:Escalation
        settings:
          embedding_model: minilm
          always_escalate: [security_incident]
          upset_examples: ["This is the third time I ask, I am furious"]

and ask for it per request: `{"texts": [...], "capabilities": ["classification", "escalation"]}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from capabilities.base import Capability, RunContext
from capabilities.classification import Classification


class EscalationSettings(BaseModel):
    # Settings arrive from YAML: refuse a misspelt field rather than ignore it.
    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_model: str = Field(description="The pooling model that embeds texts.")
    always_escalate: list[str] = Field(
        default=[], description="Labels that escalate whatever the tone."
    )
    upset_examples: list[str] = Field(
        min_length=1, description="What an upset customer sounds like."
    )
    threshold: float = Field(
        default=0.5,
        ge=-1,
        le=1,
        description="Cosine similarity to an upset example that escalates.",
    )


class EscalationDecision(BaseModel):
    escalate: bool
    reason: Literal["label", "tone"] | None = None
    tone: float = Field(description="The highest cosine similarity to an upset example.")


class Escalation(Capability[EscalationSettings, EscalationDecision]):
    name = "escalation"
    depends_on = ("classification",)
    settings_model = EscalationSettings
    output_model = EscalationDecision

    async def load(self) -> None:
        # Called once per settings version, before the first run: embed the fixed examples here.
        self._embedder = self.resources.embedder(
            self.settings.embedding_model, "escalation.embedding_model"
        )
        self._upset = await self._embedder.embed(self.settings.upset_examples)

    async def run(self, texts: Sequence[str], context: RunContext) -> list[EscalationDecision]:
        # Vectors are L2-normalised: a dot product is the cosine similarity.
        tones = (await self._embedder.embed(texts) @ self._upset.T).max(axis=1)
        labels = context.parents["classification"]
        return [
            self._decide(classification, round(float(tone), 4))
            for classification, tone in zip(labels, tones, strict=True)
        ]

    def _decide(self, classification: BaseModel, tone: float) -> EscalationDecision:
        assert isinstance(classification, Classification)
        if classification.label in self.settings.always_escalate:
            return EscalationDecision(escalate=True, reason="label", tone=tone)
        if tone >= self.settings.threshold:
            return EscalationDecision(escalate=True, reason="tone", tone=tone)
        return EscalationDecision(escalate=False, tone=tone)
