"""The capability protocol: a named step of the DAG that turns texts into one output per text.

A capability declares what it needs (`depends_on`), how it is configured (`settings_model`), what
a request may tune per call (`options_model`) and what it returns (`output_model`). Runners
(deployments/dag/runner.py) hold one loaded instance and call `run` once per coalesced batch.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, PlainSerializer, SerializationInfo

from capabilities.engine import EmbeddingEngine, GenerativeEngine
from capabilities.errors import InvalidRequestError

PUBLIC_VIEW = {"public": True}
"""The serialization context of settings shown to API callers (`Capability.public_settings`)."""
REDACTED = "[redacted]"


def _shown_url(url: str, info: SerializationInfo) -> str:
    if not (info.context or {}).get("public"):
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    origin = f"{parts.scheme}://{netloc}"
    # Userinfo, path, query and fragment are where webhook URLs carry their tokens.
    return origin if url.rstrip("/") == origin else f"{origin}/{REDACTED}"


RedactedUrl = Annotated[str, PlainSerializer(_shown_url, return_type=str)]
"""A URL setting that may hold a token: API callers see only its scheme, host and port."""


class NoOptions(BaseModel):
    """The options of a capability that a request cannot tune."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Counter(Protocol):
    """A monotonically increasing metric; the runner supplies one exported to Prometheus."""

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...


class CounterFactory(Protocol):
    def __call__(self, name: str, description: str, tag_keys: tuple[str, ...]) -> Counter: ...


@dataclass(frozen=True)
class Resources:
    """What a capability may use: engines by model name, a cache folder, a metrics factory."""

    engines: Mapping[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None
    counter: CounterFactory | None = None

    def embedder(self, name: str | None, field_name: str) -> EmbeddingEngine:
        return self._engine(name, field_name)

    def generator(self, name: str | None, field_name: str) -> GenerativeEngine:
        return self._engine(name, field_name)

    def _engine(self, name: str | None, field_name: str) -> Any:
        if name is None or name not in self.engines:
            raise InvalidRequestError(
                f"{field_name}: no engine named {name!r}; engines are {sorted(self.engines)}",
                field_name,
            )
        return self.engines[name]


class BatchLine(BaseModel):
    """A line of a batch: the same when the line runs again after a crash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_id: str
    custom_id: str


class TextSource(BaseModel):
    """Where a text of a run came from: the request and its item (for a batch line, the line)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str
    item_index: int
    item_id: str | None = None
    batch_line: BatchLine | None = None

    @property
    def stable_key(self) -> str:
        """Names the item across re-runs: a batch line that runs again after a crash gets a new
        request id, but keeps its batch id and custom_id."""
        if self.batch_line is not None:
            line = self.batch_line
            return f"batch:{line.batch_id}:{line.custom_id}:{self.item_index}"
        return f"request:{self.request_id}:{self.item_index}"


@dataclass(frozen=True)
class RunContext:
    """Per-run inputs besides the texts: parents' outputs (aligned with the texts), options and
    where each text came from (aligned with the texts; several items may share one text, and a
    caller may give none)."""

    parents: Mapping[str, Sequence[BaseModel]] = field(default_factory=dict)
    options: BaseModel = field(default_factory=NoOptions)
    sources: Sequence[Sequence[TextSource]] = ()


SettingsT = TypeVar("SettingsT", bound=BaseModel)
OutputT = TypeVar("OutputT", bound=BaseModel)


class Capability(ABC, Generic[SettingsT, OutputT]):
    """Subclass this, set the class attributes, implement `run` (and `load` if it has state)."""

    name: ClassVar[str]
    depends_on: ClassVar[tuple[str, ...]] = ()
    settings_model: ClassVar[type[BaseModel]]
    output_model: ClassVar[type[BaseModel]]
    options_model: ClassVar[type[BaseModel]] = NoOptions
    cacheable: ClassVar[bool] = True
    """False for capabilities whose run has effects that must happen every time (alert sinks)."""

    def __init__(self, settings: SettingsT, resources: Resources) -> None:
        self.settings = settings
        self.resources = resources
        self._file_digests: list[str] = []

    @classmethod
    def check_files(cls, settings: SettingsT) -> None:
        """Reads the files `settings` names and raises a `CapabilityError` naming what is wrong;
        the app builder calls it so a bad file stops start-up before any replica starts."""

    async def load(self) -> None:
        """Reads files and builds indexes; called once before the first `run`."""

    def track_file(self, content: bytes) -> None:
        """Records a loaded file's content, so editing the file changes `version`."""
        self._file_digests.append(hashlib.sha256(content).hexdigest())

    @property
    def version(self) -> str:
        """Changes whenever the settings, any loaded file or any engine's identity (its weights,
        dtype, max length...) changes; cache keys include it."""
        engines = sorted((name, engine.identity) for name, engine in self.resources.engines.items())
        material = json.dumps(
            [self.name, self.settings.model_dump(mode="json"), self._file_digests, engines],
            sort_keys=True,
        )
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    def public_settings(self) -> dict[str, Any]:
        """The settings as API callers see them: `RedactedUrl` fields cut to their origin."""
        return self.settings.model_dump(mode="json", by_alias=True, context=PUBLIC_VIEW)

    @classmethod
    def cacheable_output(cls, output: OutputT) -> bool:
        """Whether the result cache may keep `output`: not where it records a failure (a
        timeout, an error) rather than an answer, which the next request should try again."""
        return True

    @classmethod
    def public_view(cls, output: OutputT) -> Any:
        """What a response shows of one output; a wrapper of one list may show just the list."""
        return output.model_dump(mode="json")

    @abstractmethod
    async def run(self, texts: Sequence[str], context: RunContext) -> list[OutputT]:
        """Returns one output per text, in order."""

    async def close(self) -> None:
        """Finishes work `run` left in the background (webhook deliveries); called once the
        instance is replaced by a reload or its replica shuts down."""
