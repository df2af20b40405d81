"""How the classify service reaches each capability: in this process (`placement: inline`, no
crossing at all) or through its runner deployment (`placement: deployment`).

Both take the coalesced calls of many requests at once and answer each call on its own: a reply,
a reply carrying that call's failure, or the exception that ended that call alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ray.serve.handle import DeploymentHandle

from capabilities.base import Capability, Resources
from capabilities.batching import BatchReport, RunCall, RunReply
from capabilities.errors import InvalidRequestError
from capabilities.host import (
    BatchObserver,
    CapabilityHost,
    CapabilityInfo,
    CapabilitySettingsError,
)
from deployments.calls.guarded_handle import BUSY_RETRY_AFTER_S, loading
from deployments.config import AppConfig, CapabilityConfig, ConfigError
from deployments.dag.runner_client import RunnerClient
from deployments.engine.client import EngineClient
from deployments.http.errors import CapabilityFailedError, ServiceUnavailableError
from deployments.telemetry import metrics

CallOutcome = RunReply | Exception
"""One call's answer: its reply, or the error that ended it (and no other call)."""


class CapabilityClient(Protocol):
    name: str

    async def run_many(self, calls: Sequence[RunCall]) -> Sequence[CallOutcome]: ...

    async def describe(self) -> CapabilityInfo: ...


class InlineCapability:
    """A capability loaded in this replica; its settings come from the replica's user_config."""

    def __init__(self, config: CapabilityConfig, host: CapabilityHost) -> None:
        self.name = config.name
        self.default_settings = config.settings_json()
        self._host = host

    async def load(self, settings: dict[str, Any] | None) -> Capability:
        return await self._host.load(self.default_settings if settings is None else settings)

    def swap_in(self, capability: Capability) -> None:
        self._host.swap_in(capability)

    async def run_many(self, calls: Sequence[RunCall]) -> list[CallOutcome]:
        return list(await self._host.run(calls))

    async def describe(self) -> CapabilityInfo:
        return self._host.describe()

    async def close(self) -> None:
        await self._host.close()


def batch_recorder(stats: DeploymentHandle) -> BatchObserver:
    """Counts each capability batch in /v1/stats and Prometheus, never slowing the answer."""

    def record(name: str, report: BatchReport, cache_consulted: bool) -> None:
        stats.record.remote(name, report)
        metrics.record_capability_batch(name, report, cache_consulted)

    return record


def inline_capabilities(
    config: AppConfig, engines: Mapping[str, EngineClient], stats: DeploymentHandle
) -> dict[str, InlineCapability]:
    """A host per `placement: inline` capability, not yet loaded: `configure_inline` loads them."""
    resources = Resources(
        engines=engines,
        cache_dir=config.cache_dir,
        # Cached per process: a reloaded capability asks again for the metric it exports.
        counter=metrics.counter,
    )
    record = batch_recorder(stats)
    return {
        capability.name: InlineCapability(
            capability,
            CapabilityHost(capability.capability_class(), resources, config.cache.build(), record),
        )
        for capability in config.capabilities
        if capability.placement == "inline"
    }


def capability_clients(
    config: AppConfig,
    inline: Mapping[str, InlineCapability],
    runners: Mapping[str, DeploymentHandle],
) -> dict[str, CapabilityClient]:
    """Every capability's client, in the config's order: inline ones, else their runners."""
    deployed = {
        c.name: RunnerClient(c.name, runners[c.name], c.deployment.calls)
        for c in config.deployed_capabilities
    }
    return {c.name: inline.get(c.name) or deployed[c.name] for c in config.capabilities}


async def configure_inline(
    inline: Mapping[str, InlineCapability], user_config: Mapping[str, Any], replica: str
) -> None:
    """Loads every inline capability with its settings from `user_config` (by capability name)
    or, where it names none, the app's; a capability failing to load fails the whole reload, so
    the replica keeps serving the settings it had."""
    unknown = sorted(set(user_config) - set(inline))
    if unknown:
        raise ConfigError(
            f"user_config of {replica}: {unknown} are not inline capabilities; "
            f"inline capabilities are {sorted(inline)}"
        )
    try:
        with loading():
            loaded = await asyncio.gather(
                *(capability.load(user_config.get(name)) for name, capability in inline.items())
            )
    except CapabilitySettingsError as error:
        raise ConfigError(f"user_config of {replica}: {error}") from None
    for capability, instance in zip(inline.values(), loaded, strict=True):
        capability.swap_in(instance)


async def close_inline(inline: Mapping[str, InlineCapability]) -> None:
    """Waits for the work the inline capabilities left in the background (alert webhook
    deliveries), when their replica or job ends."""
    await asyncio.gather(*(capability.close() for capability in inline.values()))


def inline_settings(config: AppConfig) -> dict[str, dict[str, Any]]:
    """The `user_config` of a replica that hosts inline capabilities: settings by capability.
    An operator's override may name only some; the others keep the app's settings."""
    return {
        capability.name: capability.settings_json()
        for capability in config.capabilities
        if capability.placement == "inline"
    }


def answer_of(name: str, outcome: CallOutcome) -> RunReply:
    """The reply of one call, or its failure raised as the typed error the HTTP layer maps."""
    if isinstance(outcome, Exception):
        raise outcome
    failure = outcome.failure
    if failure is None:
        return outcome
    if failure.kind == "invalid_request":
        raise InvalidRequestError(failure.message, failure.param)
    if failure.kind == "unavailable":
        raise ServiceUnavailableError(
            f"capability {name!r} is unavailable: {failure.message}",
            failure.retry_after_s or BUSY_RETRY_AFTER_S,
        )
    raise CapabilityFailedError(f"capability {name!r} failed: {failure.message}")
