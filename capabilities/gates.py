"""Gates: yes/no guard classifiers raced per text, where the first to fire blocks it.

This is the "parallel guard" pattern. All gates start together; when a round of completions
holds a fire, the winner is its highest-priority gate and the rest are cancelled, so a blocked
text costs only as long as its fastest firing gate. A gate that times out or raises fails open
(as if clear) or closed (as if fired), whichever its config says.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from capabilities.base import Capability, Resources, RunContext
from capabilities.engine import EmbeddingEngine, GenerativeEngine

FailureMode = Literal["open", "closed"]
Reason = Literal["fired", "timeout", "error"]
Status = Literal["fired", "clear", "cancelled", "timeout", "error"]
FAILED: frozenset[Status] = frozenset({"timeout", "error"})
ERROR_MESSAGE_CHARS = 200


class GateBase(BaseModel):
    """Fields every gate kind shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    priority: int = Field(default=100, description="Among simultaneous fires, lower wins.")
    timeout_s: float = Field(default=1.0, gt=0)
    on_failure: FailureMode = Field(
        default="open", description="On timeout or error: 'open' passes the text, 'closed' blocks."
    )
    description: str | None = Field(default=None, max_length=1000)


class RegexGateConfig(GateBase):
    kind: Literal["regex"] = "regex"
    pattern: str = Field(min_length=1, description="Python regex; fires when it matches anywhere.")

    @model_validator(mode="after")
    def _pattern_compiles(self) -> RegexGateConfig:
        try:
            re.compile(self.pattern)
        except re.error as error:
            raise ValueError(f"gate {self.name!r}: invalid pattern: {error}") from None
        return self


class SimilarityGateConfig(GateBase):
    kind: Literal["similarity"] = "similarity"
    examples: list[str] = Field(min_length=1, description="Texts that should fire the gate.")
    threshold: float = Field(default=0.6, ge=-1, le=1, description="Minimum cosine similarity.")


class LlmGateConfig(GateBase):
    kind: Literal["llm"] = "llm"
    question: str = Field(min_length=1, description="A yes/no question about the text.")
    threshold: float = Field(default=0.5, ge=0, le=1, description="Minimum probability of 'yes'.")


GateConfig = Annotated[
    RegexGateConfig | SimilarityGateConfig | LlmGateConfig, Field(discriminator="kind")
]


class GatesSettings(BaseModel):
    """Configuration of the gates capability."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gates: list[GateConfig] = Field(min_length=1)
    embedding_model: str | None = Field(default=None, description="Pooling model for similarity.")
    generative_model: str | None = Field(default=None, description="Generate model for llm.")

    @model_validator(mode="after")
    def _gates_are_servable(self) -> GatesSettings:
        names = [gate.name for gate in self.gates]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"gate names must be unique; repeated: {', '.join(duplicates)}")
        for gate in self.gates:
            if isinstance(gate, SimilarityGateConfig) and self.embedding_model is None:
                raise ValueError(f"gate {gate.name!r} (similarity) needs embedding_model")
            if isinstance(gate, LlmGateConfig) and self.generative_model is None:
                raise ValueError(f"gate {gate.name!r} (llm) needs generative_model")
        return self


class GateOutcome(BaseModel):
    """What one gate did for one text; `seconds` counts from the start of the race."""

    status: Status
    score: float | None = None
    error: str | None = None
    seconds: float = Field(ge=0)


class GateReport(BaseModel):
    """The result for one text: which gate blocked it, if any, and every gate's outcome."""

    fired: str | None
    blocked: bool
    reason: Reason | None
    outcomes: dict[str, GateOutcome]


@dataclass(frozen=True)
class GateCheck:
    """A gate's answer for one text; `score` is its evidence (similarity, p(yes)) if it has one."""

    fired: bool
    score: float | None = None


class Gate(Protocol):
    """What `race` needs of a gate; tests implement it with controllable timings."""

    name: str
    priority: int
    timeout_s: float
    on_failure: FailureMode

    async def check(self, text: str) -> GateCheck: ...


class ConfiguredGate:
    """The race-facing fields of a gate, copied from its config."""

    def __init__(self, config: GateBase) -> None:
        self.name = config.name
        self.priority = config.priority
        self.timeout_s = config.timeout_s
        self.on_failure: FailureMode = config.on_failure


class RegexGate(ConfiguredGate):
    def __init__(self, config: RegexGateConfig) -> None:
        super().__init__(config)
        self._pattern = re.compile(config.pattern)

    async def check(self, text: str) -> GateCheck:
        return GateCheck(fired=self._pattern.search(text) is not None)


class SimilarityGate(ConfiguredGate):
    def __init__(
        self, config: SimilarityGateConfig, embedder: EmbeddingEngine, examples: np.ndarray
    ) -> None:
        super().__init__(config)
        self._embedder = embedder
        self._examples = examples.astype(np.float32)
        self._threshold = config.threshold

    async def check(self, text: str) -> GateCheck:
        [query] = await self._embedder.embed([text])
        score = float(np.max(self._examples @ query))
        return GateCheck(fired=score >= self._threshold, score=score)


def llm_gate_prompt(question: str, text: str) -> str:
    """Static part first and the text last, so prefix caching pays."""
    return f"{question}\n\nText: {text}\nAnswer yes or no:"


class LlmGate(ConfiguredGate):
    def __init__(self, config: LlmGateConfig, generator: GenerativeEngine) -> None:
        super().__init__(config)
        self._generator = generator
        self._question = config.question
        self._threshold = config.threshold

    async def check(self, text: str) -> GateCheck:
        prompt = llm_gate_prompt(self._question, text)
        [result] = await self._generator.choose([prompt], ["yes", "no"])
        score = result.probabilities.get("yes", 0.0)
        return GateCheck(fired=score >= self._threshold, score=score)


async def build_gates(settings: GatesSettings, resources: Resources) -> list[Gate]:
    """Builds the configured gates, embedding all similarity examples in one call."""
    similarity = [gate for gate in settings.gates if isinstance(gate, SimilarityGateConfig)]
    vectors: dict[str, np.ndarray] = {}
    if similarity:
        embedder = resources.embedder(settings.embedding_model, "gates.embedding_model")
        embedded = await embedder.embed([text for gate in similarity for text in gate.examples])
        bounds = np.cumsum([len(gate.examples) for gate in similarity])[:-1]
        vectors = dict(zip([g.name for g in similarity], np.split(embedded, bounds), strict=True))
    gates: list[Gate] = []
    for config in settings.gates:
        if isinstance(config, RegexGateConfig):
            gates.append(RegexGate(config))
        elif isinstance(config, SimilarityGateConfig):
            embedder = resources.embedder(settings.embedding_model, "gates.embedding_model")
            gates.append(SimilarityGate(config, embedder, vectors[config.name]))
        else:
            generator = resources.generator(settings.generative_model, "gates.generative_model")
            gates.append(LlmGate(config, generator))
    return gates


async def _attempt(gate: Gate, text: str, started: float) -> GateOutcome:
    deadline = asyncio.timeout(gate.timeout_s)
    try:
        async with deadline:
            check = await gate.check(text)
    except Exception as error:  # noqa: BLE001 - any failure is a gate outcome (open or closed)
        seconds = time.perf_counter() - started
        # Only our own deadline is a timeout; a TimeoutError the gate raised itself is an error.
        if deadline.expired():
            return GateOutcome(status="timeout", seconds=seconds)
        message = f"{type(error).__name__}: {error}"[:ERROR_MESSAGE_CHARS]
        return GateOutcome(status="error", error=message, seconds=seconds)
    status: Status = "fired" if check.fired else "clear"
    return GateOutcome(status=status, score=check.score, seconds=time.perf_counter() - started)


def _blocking_reason(gate: Gate, outcome: GateOutcome) -> Reason | None:
    if outcome.status == "fired":
        return "fired"
    if gate.on_failure == "closed" and outcome.status == "timeout":
        return "timeout"
    if gate.on_failure == "closed" and outcome.status == "error":
        return "error"
    return None


async def race(gates: Sequence[Gate], text: str) -> GateReport:
    """Runs the gates concurrently on `text`; the first round with a fire decides, by priority."""
    started = time.perf_counter()
    tasks = [asyncio.create_task(_attempt(gate, text, started)) for gate in gates]
    position = {task: index for index, task in enumerate(tasks)}
    outcomes: dict[str, GateOutcome] = {}
    winner: tuple[Gate, Reason] | None = None
    pending = set(tasks)
    try:
        while pending and winner is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            fires: list[tuple[int, int, Reason]] = []
            for task in done:
                index = position[task]
                outcome = outcomes[gates[index].name] = task.result()
                reason = _blocking_reason(gates[index], outcome)
                if reason is not None:
                    fires.append((gates[index].priority, index, reason))
            if fires:
                _, index, reason = min(fires)
                winner = (gates[index], reason)
    finally:
        # Awaiting the cancelled gates guarantees none outlives the race, even if it is cancelled.
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    cancelled = GateOutcome(status="cancelled", seconds=time.perf_counter() - started)
    return GateReport(
        fired=winner[0].name if winner else None,
        blocked=winner is not None,
        reason=winner[1] if winner else None,
        outcomes={gate.name: outcomes.get(gate.name, cancelled) for gate in gates},
    )


class GatesCapability(Capability[GatesSettings, GateReport]):
    """Races the configured gates on every text; a blocked text names the gate that fired."""

    name: ClassVar[str] = "gates"
    depends_on: ClassVar[tuple[str, ...]] = ()
    settings_model: ClassVar[type[BaseModel]] = GatesSettings
    output_model: ClassVar[type[BaseModel]] = GateReport

    def __init__(self, settings: GatesSettings, resources: Resources) -> None:
        super().__init__(settings, resources)
        self.gates: list[Gate] = []

    async def load(self) -> None:
        self.gates = await build_gates(self.settings, self.resources)

    @classmethod
    def cacheable_output(cls, output: GateReport) -> bool:
        # A gate that timed out or failed (an engine restarting) may well answer next time.
        return not any(outcome.status in FAILED for outcome in output.outcomes.values())

    async def run(self, texts: Sequence[str], context: RunContext) -> list[GateReport]:
        # One task per text is cheap: the engines coalesce concurrent calls into batches.
        return list(await asyncio.gather(*(race(self.gates, text) for text in texts)))
