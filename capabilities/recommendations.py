"""Recommendations: support actions from a catalog for each text, given its predicted label.

A catalog file lists actions and the labels they help with; an action that names no labels helps
with every label. For each text the candidates are the actions that apply to the label the
classification capability predicted, and the mode picks among them:

- `similarity` ranks candidates by cosine similarity between the text and each action's
  "title: description" (embedded once at load); the score is that similarity clipped to [0, 1].
- `generative` asks a model for the ids of the most helpful candidates, best first, under a JSON
  schema that only allows candidate ids. It has no similarity to report, so the score is
  1 / (rank + 1): it orders the actions, it does not measure how well they fit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from capabilities.base import Capability, Resources, RunContext
from capabilities.classification import Classification
from capabilities.engine import EmbeddingEngine, GenerativeEngine
from capabilities.errors import CapabilityError
from capabilities.json_lines import json_lines

Mode = Literal["similarity", "generative"]
CatalogFormat = Literal["yaml", "jsonl"]
CATALOG_SUFFIXES: dict[str, CatalogFormat] = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


class CatalogError(CapabilityError):
    """A recommendations catalog file is missing, empty or holds an invalid action."""


class CatalogAction(BaseModel):
    """One support action of the catalog; no `labels` means it applies to every label."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=1000)
    labels: tuple[Annotated[str, Field(min_length=1)], ...] = ()

    @field_validator("labels", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        # A bare `labels:` in YAML reads as null; it means the same as leaving the key out.
        return () if value is None else value

    @property
    def embedding_text(self) -> str:
        return f"{self.title}: {self.description}"


Target = tuple[int, tuple[str, ...]]
"""A text's position and the labels it was answered at or under (its path, or its label)."""


class Catalog:
    """The actions in file order, indexed by the labels they apply to."""

    def __init__(self, actions: Sequence[CatalogAction]) -> None:
        self.actions = list(actions)
        self._generic = tuple(i for i, action in enumerate(self.actions) if not action.labels)
        specific: dict[str, set[int]] = {}
        for position, action in enumerate(self.actions):
            for label in action.labels:
                specific.setdefault(label, set()).add(position)
        self._by_label = {
            label: tuple(sorted(positions.union(self._generic)))
            for label, positions in specific.items()
        }

    @property
    def labels(self) -> set[str]:
        """Every label that some action names."""
        return set(self._by_label)

    def applicable(self, labels: Sequence[str]) -> tuple[int, ...]:
        """Positions, in file order, of the actions that apply to any of `labels`: a text's
        label, or every node of its path through a label tree (an action may name a parent)."""
        positions = {i for label in labels for i in self._by_label.get(label, ())}
        return tuple(sorted(positions.union(self._generic)))


def catalog_format(path: Path) -> CatalogFormat | None:
    return CATALOG_SUFFIXES.get(path.suffix.lower())


def load_catalog(path: Path) -> tuple[Catalog, bytes]:
    """Reads and checks a catalog; returns it with the file's bytes, for `track_file`.

    Every problem names the file and the action (`action N` in YAML, `line N` in JSONL).
    """
    file_format = catalog_format(path)
    if file_format is None:
        raise CatalogError(
            f"catalog file {path}: unsupported suffix {path.suffix!r}; "
            f"use one of {', '.join(CATALOG_SUFFIXES)}"
        )
    if not path.is_file():
        raise CatalogError(f"catalog file {path} does not exist")
    try:
        content = path.read_bytes()
    except OSError as error:
        raise CatalogError(f"catalog file {path} cannot be read: {error}") from None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CatalogError(f"catalog file {path} is not UTF-8: {error}") from None
    entries = _yaml_entries(path, text) if file_format == "yaml" else _jsonl_entries(path, text)
    if not entries:
        raise CatalogError(f"catalog file {path} has no actions")
    actions: list[CatalogAction] = []
    first_seen: dict[str, str] = {}
    for where, entry in entries:
        try:
            action = CatalogAction.model_validate(entry)
        except ValidationError as error:
            raise CatalogError(f"catalog file {path}, {where}: {_problems(error)}") from None
        if action.id in first_seen:
            raise CatalogError(
                f"catalog file {path}, {where}: duplicate id {action.id!r} "
                f"(first at {first_seen[action.id]})"
            )
        first_seen[action.id] = where
        actions.append(action)
    return Catalog(actions), content


def _yaml_entries(path: Path, text: str) -> list[tuple[str, object]]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise CatalogError(f"catalog file {path}{where}: invalid YAML: {error}") from None
    if document is None:
        return []
    if not isinstance(document, dict) or not isinstance(document.get("actions", []), list):
        raise CatalogError(f"catalog file {path}: needs a top-level 'actions:' list")
    unknown = sorted(str(key) for key in document if key != "actions")
    if unknown:
        raise CatalogError(
            f"catalog file {path}: unknown top-level keys {unknown}; only 'actions' is read"
        )
    entries: list[tuple[str, object]] = []
    for number, entry in enumerate(document.get("actions", []), start=1):
        # The id, when there is one, finds the action faster than its position in a long file.
        named = isinstance(entry, dict) and isinstance(entry.get("id"), str)
        entries.append(
            (f"action {number} (id {entry['id']!r})" if named else f"action {number}", entry)
        )
    return entries


def _jsonl_entries(path: Path, text: str) -> list[tuple[str, object]]:
    entries: list[tuple[str, object]] = []
    for number, line in json_lines(text):
        try:
            entries.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise CatalogError(
                f"catalog file {path}, line {number}: invalid JSON: {error}"
            ) from None
    return entries


def _problems(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in issue['loc']) or 'action'}: {issue['msg']}"
        for issue in error.errors()
    )


DEFAULT_INSTRUCTION = (
    "You are a support assistant for a digital bank. From the actions below, pick the ones that "
    "best help the customer with their message, most helpful first. Answer with their ids."
)


class RecommendationsSettings(BaseModel):
    """Configuration of the recommendations capability."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    catalog_path: Path = Field(
        description="Actions file: .yaml/.yml with a top-level `actions:` list, or .jsonl."
    )
    mode: Mode = "similarity"
    embedding_model: str | None = Field(default=None, description="Pooling model for similarity.")
    generative_model: str | None = Field(default=None, description="Generate model for generative.")
    top_k: int = Field(default=3, gt=0, description="Most actions returned per text.")
    min_confidence: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Texts classified with less confidence get no actions: the label is too "
        "uncertain to act on.",
    )
    instruction: str = Field(default=DEFAULT_INSTRUCTION, min_length=1)
    embed_chunk_size: int = Field(default=256, gt=0)

    @field_validator("catalog_path")
    @classmethod
    def _absolute_catalog(cls, value: Path) -> Path:
        path = value.expanduser().resolve()
        if catalog_format(path) is None:
            raise ValueError(
                f"catalog_path {path} must end in one of {', '.join(CATALOG_SUFFIXES)}"
            )
        return path

    @model_validator(mode="after")
    def _mode_is_servable(self) -> RecommendationsSettings:
        if self.mode == "similarity" and self.embedding_model is None:
            raise ValueError("mode 'similarity' needs embedding_model")
        if self.mode == "generative" and self.generative_model is None:
            raise ValueError("mode 'generative' needs generative_model")
        return self


class Recommendation(BaseModel):
    """An action recommended for one text."""

    id: str
    title: str
    score: float = Field(
        ge=0,
        le=1,
        description="similarity mode: cosine similarity clipped to [0, 1]; generative mode: "
        "1 / (rank + 1), an order rather than a measure of fit.",
    )
    label: str = Field(description="The predicted label the action was picked for.")


class Recommendations(BaseModel):
    """The result for one text: best action first, empty when none applies."""

    actions: list[Recommendation]


def generative_prompt(
    instruction: str, candidates: Sequence[CatalogAction], text: str, label: str
) -> str:
    """Static part (instruction, candidates) first and the text last, so prefix caching pays."""
    lines = [instruction, "Actions:"]
    lines += [f"- {action.id}: {action.title} — {action.description}" for action in candidates]
    return "\n".join(lines) + f"\n\nText: {text}\nPredicted label: {label}\nAnswer: "


def action_ids_schema(candidate_ids: Sequence[str], top_k: int) -> dict[str, Any]:
    """The JSON schema of a generative answer: 1 to top_k ids, each one of the candidates."""
    return {
        "type": "object",
        "properties": {
            "action_ids": {
                "type": "array",
                "items": {"type": "string", "enum": list(candidate_ids)},
                "minItems": 1,
                # More items than candidates could only repeat ids.
                "maxItems": min(top_k, len(candidate_ids)),
            }
        },
        "required": ["action_ids"],
        "additionalProperties": False,
    }


class RecommendationsCapability(Capability[RecommendationsSettings, Recommendations]):
    """Recommends catalog actions for each text's predicted label, by similarity or generation."""

    name = "recommendations"
    depends_on = ("classification",)
    settings_model = RecommendationsSettings
    output_model = Recommendations

    def __init__(self, settings: RecommendationsSettings, resources: Resources) -> None:
        super().__init__(settings, resources)
        self._embedder: EmbeddingEngine | None = None
        self._generator: GenerativeEngine | None = None
        self.catalog = Catalog([])
        self._action_vectors = np.zeros((0, 0), dtype=np.float32)

    @classmethod
    def check_files(cls, settings: RecommendationsSettings) -> None:
        load_catalog(settings.catalog_path)

    @classmethod
    def public_view(cls, output: Recommendations) -> Any:
        return [action.model_dump(mode="json") for action in output.actions]

    async def load(self) -> None:
        """Reads the catalog and, in similarity mode, embeds every action once."""
        settings = self.settings
        catalog, content = load_catalog(settings.catalog_path)
        self.track_file(content)
        self.catalog = catalog
        if settings.mode == "generative":
            self._generator = self.resources.generator(
                settings.generative_model, "recommendations.generative_model"
            )
            return
        self._embedder = self.resources.embedder(
            settings.embedding_model, "recommendations.embedding_model"
        )
        texts = [action.embedding_text for action in catalog.actions]
        self._action_vectors = await self._embed_chunked(self._embedder, texts)

    async def _embed_chunked(self, embedder: EmbeddingEngine, texts: Sequence[str]) -> np.ndarray:
        size = self.settings.embed_chunk_size
        chunks = [texts[start : start + size] for start in range(0, len(texts), size)]
        parts = await asyncio.gather(*(embedder.embed(chunk) for chunk in chunks))
        return np.concatenate(parts, axis=0).astype(np.float32)

    async def run(self, texts: Sequence[str], context: RunContext) -> list[Recommendations]:
        classifications = cast(Sequence[Classification], context.parents["classification"])
        if len(classifications) != len(texts):
            raise ValueError(
                f"{len(texts)} texts but {len(classifications)} classifications; they must align"
            )
        # Each text that gets candidates, with its path; the others answer an empty list.
        targets = [
            (position, tuple(classification.path_labels))
            for position, classification in enumerate(classifications)
            if classification.confidence >= self.settings.min_confidence
            and self.catalog.applicable(classification.path_labels)
        ]
        if self._generator is not None:
            picked = await self._by_generation(self._generator, texts, targets)
        else:
            assert self._embedder is not None, "load() runs before run()"
            picked = await self._by_similarity(self._embedder, texts, targets)
        return [Recommendations(actions=picked.get(position, [])) for position in range(len(texts))]

    async def _by_similarity(
        self, embedder: EmbeddingEngine, texts: Sequence[str], targets: Sequence[Target]
    ) -> dict[int, list[Recommendation]]:
        unique = list(dict.fromkeys(texts[position] for position, _ in targets))
        if not unique:
            return {}
        queries = await embedder.embed(unique)
        row_of = {text: row for row, text in enumerate(unique)}
        picked: dict[int, list[Recommendation]] = {}
        for position, path in targets:
            candidates, label = self.catalog.applicable(path), path[-1]
            similarities = self._action_vectors[list(candidates)] @ queries[row_of[texts[position]]]
            # Stable, so equally similar actions keep the catalog's order.
            order = np.argsort(-similarities, kind="stable")[: self.settings.top_k]
            picked[position] = [
                self._recommendation(candidates[i], float(similarities[i]), label) for i in order
            ]
        return picked

    async def _by_generation(
        self, generator: GenerativeEngine, texts: Sequence[str], targets: Sequence[Target]
    ) -> dict[int, list[Recommendation]]:
        # Texts that share a path share the candidates, hence the schema: one engine call each.
        positions_by_path: dict[tuple[str, ...], list[int]] = {}
        for position, path in targets:
            positions_by_path.setdefault(path, []).append(position)
        answers = await asyncio.gather(
            *(
                self._generate(generator, path, [texts[position] for position in positions])
                for path, positions in positions_by_path.items()
            )
        )
        picked: dict[int, list[Recommendation]] = {}
        for positions, answer in zip(positions_by_path.values(), answers, strict=True):
            picked.update(zip(positions, answer, strict=True))
        return picked

    async def _generate(
        self, generator: GenerativeEngine, path: tuple[str, ...], texts: Sequence[str]
    ) -> list[list[Recommendation]]:
        positions, label = self.catalog.applicable(path), path[-1]
        candidates = [self.catalog.actions[i] for i in positions]
        unique = list(dict.fromkeys(texts))
        prompts = [
            generative_prompt(self.settings.instruction, candidates, text, label) for text in unique
        ]
        schema = action_ids_schema([action.id for action in candidates], self.settings.top_k)
        replies = await generator.generate_json(prompts, schema)
        position_of = {action.id: i for action, i in zip(candidates, positions, strict=True)}
        answers = {
            text: self._from_reply(reply, position_of, label)
            for text, reply in zip(unique, replies, strict=True)
        }
        return [answers[text] for text in texts]

    def _from_reply(
        self, reply: Mapping[str, Any], position_of: Mapping[str, int], label: str
    ) -> list[Recommendation]:
        ids = reply.get("action_ids")
        if not isinstance(ids, list):
            return []
        # The schema should make every id a unique candidate, but a reply is data, not a promise.
        known = (i for i in ids if isinstance(i, str) and i in position_of)
        chosen = list(dict.fromkeys(known))[: self.settings.top_k]
        return [
            self._recommendation(position_of[action_id], 1 / (rank + 1), label)
            for rank, action_id in enumerate(chosen)
        ]

    def _recommendation(self, position: int, score: float, label: str) -> Recommendation:
        action = self.catalog.actions[position]
        return Recommendation(
            id=action.id, title=action.title, score=min(1.0, max(0.0, score)), label=label
        )
