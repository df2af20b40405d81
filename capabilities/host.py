"""A loaded capability, wherever it runs: in the ingress and batch runner (`placement: inline`) or
in a runner deployment of its own (`placement: deployment`).

The host validates settings, builds and loads a new instance beside the old one and only then swaps
it in, so a reload never mixes old and new settings inside one run; it runs coalesced calls through
`run_batch` (dedup, result cache, per-call failures) and tells `on_batch` what each batch did.
A replaced instance is closed in the background (its pending webhook deliveries finish);
`close` waits for those and closes the serving one, when the replica shuts down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from capabilities.base import Capability, Resources
from capabilities.batching import BatchReport, RunCall, RunReply, run_batch
from capabilities.cache import ResultCache
from capabilities.errors import CapabilityError, validation_problems

BatchObserver = Callable[[str, BatchReport, bool], None]
"""Told (capability name, what the batch did, whether the result cache was consulted)."""


class CapabilitySettingsError(CapabilityError):
    """Settings a capability's settings model refuses; the message names each field at fault."""


class CapabilityInfo(BaseModel):
    name: str
    depends_on: list[str]
    version: str
    settings: dict[str, Any]


class CapabilityHost:
    def __init__(
        self,
        capability_class: type[Capability],
        resources: Resources,
        cache: ResultCache | None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.capability_class = capability_class
        self._resources = resources
        self._cache = cache
        self._on_batch = on_batch
        self._capability: Capability | None = None
        # Replaced instances still closing; held here, since the loop keeps only weak references.
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self.capability_class.name

    async def configure(self, settings: dict[str, Any]) -> None:
        self.swap_in(await self.load(settings))

    async def load(self, settings: dict[str, Any]) -> Capability:
        """A new instance on `settings`, loaded (files read, examples embedded) but not yet
        serving: the old one answers until `swap_in`."""
        try:
            parsed = self.capability_class.settings_model.model_validate(settings)
        except ValidationError as error:
            raise CapabilitySettingsError(
                f"settings of capability {self.name!r}: {validation_problems(error)}"
            ) from None
        capability = self.capability_class(parsed, self._resources)
        await capability.load()
        return capability

    def swap_in(self, capability: Capability) -> None:
        replaced, self._capability = self._capability, capability
        if replaced is not None:
            closing = asyncio.get_running_loop().create_task(replaced.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Closes the serving instance and waits for replaced ones to finish closing."""
        if self._capability is not None:
            await self._capability.close()
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def run(self, calls: Sequence[RunCall]) -> list[RunReply]:
        capability = self._loaded()
        replies, report = await run_batch(capability, calls, self._cache)
        if self._on_batch is not None:
            self._on_batch(self.name, report, self._cache is not None and capability.cacheable)
        return replies

    def describe(self) -> CapabilityInfo:
        capability = self._loaded()
        return CapabilityInfo(
            name=self.name,
            depends_on=list(self.capability_class.depends_on),
            version=capability.version,
            settings=capability.public_settings(),
        )

    def _loaded(self) -> Capability:
        if self._capability is None:
            raise RuntimeError(f"capability {self.name!r} is used before its settings are loaded")
        return self._capability
