"""`/v1/classify` over the capabilities: what the ingress answers online and what the batch
runner answers for each `/v1/classify` line, through the same DAG and batching."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

from capabilities.base import BatchLine, Capability, TextSource
from capabilities.batching import RunCall
from capabilities.classification import Classification
from capabilities.plan import Plan, execute
from deployments.config import AppConfig, BatchingConfig
from deployments.dag.capability_clients import (
    CallOutcome,
    CapabilityClient,
    InlineCapability,
    answer_of,
    capability_clients,
    inline_capabilities,
)
from deployments.engine.client import EngineClient, engine_clients
from deployments.http.schemas import ClassifyRequest, ClassifyResponse, ItemResult


def item_result(
    index: int,
    item_id: str | None,
    outputs: dict[str, BaseModel],
    classes: dict[str, type[Capability]],
) -> ItemResult:
    fields: dict[str, object] = {}
    for name, output in outputs.items():
        if isinstance(output, Classification):
            fields.update(output.model_dump(include={"label", "confidence", "top_k", "decoding"}))
        else:
            fields[name] = classes[name].public_view(output)
    return ItemResult(index=index, id=item_id, **fields)


class ClassifyService:
    """Plans each request's capabilities and runs them, coalescing the capability calls of
    concurrent requests in this process: each capability runs (inline) or is crossed to (its
    runner) once per batch, not once per request."""

    def __init__(
        self,
        config: AppConfig,
        capabilities: Mapping[str, CapabilityClient],
        batching: BatchingConfig | None,
    ) -> None:
        """`batching` coalesces the calls of concurrent requests. `@serve.batch` works only
        inside a Serve replica, so a driver outside Serve (a `ray job submit` job) passes None and
        runs each call on its own."""
        self._config = config
        self._capabilities = capabilities
        self._registry = config.registry()
        self._classes = {c.name: c.capability_class() for c in config.capabilities}
        if batching is None:
            self._send = self._send_alone
        else:
            self._send_coalesced.set_max_batch_size(batching.max_batch_size)
            self._send_coalesced.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
            self._send = self._send_coalesced

    async def classify(
        self,
        body: ClassifyRequest,
        request_id: str,
        trace: str | None = None,
        batch_line: BatchLine | None = None,
    ) -> ClassifyResponse:
        """The answer to `body`; `trace` (the caller's traceparent) goes with every capability
        call, so whatever fails on the way is logged with it; `batch_line` names the batch line
        the request answers, if it is one."""
        plan = Plan.of(
            self._registry, body.requested_capabilities(self._config.default_capabilities)
        )
        options = body.options()
        item_ids = body.all_ids()
        versions: dict[str, str] = {}

        async def run(
            name: str, texts: list[str], parents: dict[str, list[BaseModel]], items: list[list[int]]
        ) -> list[BaseModel]:
            sources = [
                [
                    TextSource(
                        request_id=request_id,
                        item_index=index,
                        item_id=item_ids[index],
                        batch_line=batch_line,
                    )
                    for index in indexes
                ]
                for indexes in items
            ]
            call = RunCall(
                texts=texts,
                parents=parents,
                options=options.get(name, {}),
                sources=sources,
                trace=trace,
            )
            reply = answer_of(name, await self._send(name, call))
            versions[name] = reply.version
            return reply.outputs or []

        outputs = await execute(plan, body.all_texts(), run)
        results = [
            item_result(index, item_id, item_outputs, self._classes)
            for index, (item_id, item_outputs) in enumerate(zip(item_ids, outputs, strict=True))
        ]
        strategy = next(
            (o["classification"].strategy for o in outputs if "classification" in o), None
        )
        return ClassifyResponse(
            id=request_id,
            model=self.classification_model(strategy),
            strategy=strategy,
            capability_versions=dict(sorted(versions.items())),
            results=results,
        )

    def classification_model(self, strategy: str | None = None) -> str | None:
        """The model behind classification answers: the embedding model unless generative."""
        if strategy is None:
            return None
        settings = self._config.capability("classification").settings
        return settings.get("generative_model" if strategy == "generative" else "embedding_model")

    async def _send_alone(self, name: str, call: RunCall) -> CallOutcome:
        [outcome] = await run_per_capability(self._capabilities, [name], [call])
        return outcome

    # Batches wait on engines (inline) or runners: many may be in flight at once.
    @serve.batch(max_concurrent_batches=64)
    async def _send_coalesced(self, names: list[str], calls: list[RunCall]) -> list[CallOutcome]:
        return await run_per_capability(self._capabilities, names, calls)


async def run_per_capability(
    capabilities: Mapping[str, CapabilityClient], names: list[str], calls: list[RunCall]
) -> list[CallOutcome]:
    """Runs the calls of many requests, each capability once over all of its calls. Whatever
    ends one capability's run (an engine down, a runner crossing timing out) ends only the calls
    to that capability; every call gets its own outcome."""
    by_capability: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        by_capability.setdefault(name, []).append(index)

    async def run(name: str, indexes: list[int]) -> list[CallOutcome]:
        try:
            return await capabilities[name].run_many([calls[index] for index in indexes])
        except Exception as error:  # noqa: BLE001 - the outcome of these calls alone
            return [error] * len(indexes)

    outcomes: list[CallOutcome] = [RuntimeError("no outcome")] * len(calls)
    answered = await asyncio.gather(*(run(n, indexes) for n, indexes in by_capability.items()))
    for indexes, results in zip(by_capability.values(), answered, strict=True):
        for index, result in zip(indexes, results, strict=True):
            outcomes[index] = result
    return outcomes


@dataclass(frozen=True)
class ClassifyWiring:
    """What a replica that answers /v1/classify holds: clients of the engines, the inline
    capabilities (loaded by `configure_inline` from its user_config), every capability's client
    and the service over them."""

    engines: dict[str, EngineClient]
    inline: dict[str, InlineCapability]
    capabilities: dict[str, CapabilityClient]
    service: ClassifyService

    @classmethod
    def of(
        cls,
        config: AppConfig,
        engines: Mapping[str, DeploymentHandle],
        runners: Mapping[str, DeploymentHandle],
        stats: DeploymentHandle,
        batching: BatchingConfig | None,
    ) -> ClassifyWiring:
        engine_calls = engine_clients(config, engines)
        inline = inline_capabilities(config, engine_calls, stats)
        capabilities = capability_clients(config, inline, runners)
        service = ClassifyService(config, capabilities, batching)
        return cls(engine_calls, inline, capabilities, service)
