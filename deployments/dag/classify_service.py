"""`/v1/classify` over the capabilities: what the ingress answers online and what the batch
runner answers for each `/v1/classify` line, through the same DAG and batching."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import cast

from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle

from capabilities.base import BatchLine, Capability, TextSource
from capabilities.batching import RunCall
from capabilities.classification import MODEL_FIELDS, Classification, Strategy
from capabilities.plan import Plan, RunCapability, execute, execute_per_item
from capabilities.priority import Priority
from deployments.coalescing import PriorityBatches
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
from deployments.http.errors import api_error_for, error_detail
from deployments.http.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ClassifyStreamLine,
    ClassifySummary,
    ItemError,
    ItemResult,
)


def strategy_of(outputs: Sequence[Mapping[str, BaseModel]]) -> Strategy | None:
    """The strategy classification ran with: the same for every item of one request."""
    return next(
        (
            cast(Classification, o["classification"]).strategy
            for o in outputs
            if "classification" in o
        ),
        None,
    )


def item_result(
    index: int,
    item_id: str | None,
    outputs: dict[str, BaseModel],
    classes: dict[str, type[Capability]],
) -> ItemResult:
    fields: dict[str, object] = {}
    for name, output in outputs.items():
        if isinstance(output, Classification):
            fields.update(
                output.model_dump(include={"label", "confidence", "top_k", "path", "decoding"})
            )
        else:
            fields[name] = classes[name].public_view(output)
    return ItemResult(index=index, id=item_id, **fields)


class ClassifyService:
    """Plans each request's capabilities and runs them, coalescing the capability calls of
    concurrent requests in this process: each capability runs (inline) or is crossed to (its
    runner) once per batch, not once per request. Calls coalesce with calls of their own
    priority (`deployments.coalescing`)."""

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
            # Batches wait on engines (inline) or runners: many may be in flight at once.
            self._coalesced = PriorityBatches(self._run_coalesced, batching, 64)
            self._send = self._send_coalesced

    async def classify(
        self,
        body: ClassifyRequest,
        request_id: str,
        priority: Priority,
        trace: str | None = None,
        batch_line: BatchLine | None = None,
    ) -> ClassifyResponse:
        """The answer to `body`, its engine work run at `priority`; `trace` (the caller's
        traceparent) goes with every capability call, so whatever fails on the way is logged with
        it; `batch_line` names the batch line the request answers, if it is one."""
        plan = self._plan(body)
        versions: dict[str, str] = {}
        run = self._runner(body, request_id, priority, versions, trace, batch_line)
        outputs = await execute(plan, body.all_texts(), run)
        results = [
            item_result(index, item_id, item_outputs, self._classes)
            for index, (item_id, item_outputs) in enumerate(
                zip(body.all_ids(), outputs, strict=True)
            )
        ]
        strategy = strategy_of(outputs)
        return ClassifyResponse(
            id=request_id,
            model=self.classification_model(strategy),
            strategy=strategy,
            priority=priority,
            capability_versions=dict(sorted(versions.items())),
            results=results,
        )

    def stream(
        self, body: ClassifyRequest, request_id: str, priority: Priority, trace: str | None = None
    ) -> AsyncGenerator[ClassifyStreamLine]:
        """The request's lines: each item's result or error as that item completes, then the
        summary. What fails the whole request (a capability no item may ask for) raises here,
        before the first line; what fails an item while it runs becomes that item's line."""
        return self._stream(self._plan(body), body, request_id, priority, trace)

    async def _stream(
        self,
        plan: Plan,
        body: ClassifyRequest,
        request_id: str,
        priority: Priority,
        trace: str | None,
    ) -> AsyncGenerator[ClassifyStreamLine]:
        versions: dict[str, str] = {}
        ids = body.all_ids()
        completed: list[dict[str, BaseModel]] = []
        failed = 0
        run = self._runner(body, request_id, priority, versions, trace, None)
        async with aclosing(execute_per_item(plan, body.all_texts(), run)) as items:
            async for index, outcome in items:
                if isinstance(outcome, Exception):
                    failed += 1
                    error = api_error_for(outcome, f"streamed item {index} of {request_id}")
                    line: ItemResult | ItemError = ItemError(
                        index=index,
                        id=ids[index],
                        status=error.status_code,
                        error=error_detail(error),
                    )
                else:
                    completed.append(outcome)
                    line = item_result(index, ids[index], outcome, self._classes)
                yield ClassifyStreamLine(line)
        strategy = strategy_of(completed)
        yield ClassifyStreamLine(
            ClassifySummary(
                id=request_id,
                model=self.classification_model(strategy),
                strategy=strategy,
                priority=priority,
                capability_versions=dict(sorted(versions.items())),
                succeeded=len(completed),
                failed=failed,
            )
        )

    def _plan(self, body: ClassifyRequest) -> Plan:
        return Plan.of(
            self._registry, body.requested_capabilities(self._config.default_capabilities)
        )

    def _runner(
        self,
        body: ClassifyRequest,
        request_id: str,
        priority: Priority,
        versions: dict[str, str],
        trace: str | None,
        batch_line: BatchLine | None,
    ) -> RunCapability:
        """Runs one capability over texts through this process's coalescing, with the request's
        options, sources and priority, noting the settings version each capability answered with in
        `versions`."""
        options = body.options()
        item_ids = body.all_ids()

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
                priority=priority,
            )
            reply = answer_of(name, await self._send(name, call))
            versions[name] = reply.version
            return reply.outputs or []

        return run

    def classification_model(self, strategy: str | None = None) -> str | None:
        """The model behind classification answers: the one the strategy runs on."""
        if strategy not in MODEL_FIELDS:
            return None
        settings = self._config.capability("classification").settings
        return settings.get(MODEL_FIELDS[strategy])

    async def _send_alone(self, name: str, call: RunCall) -> CallOutcome:
        [outcome] = await run_per_capability(self._capabilities, [name], [call])
        return outcome

    async def _send_coalesced(self, name: str, call: RunCall) -> CallOutcome:
        return await self._coalesced.submit(call.priority, (name, call))

    async def _run_coalesced(self, calls: list[tuple[str, RunCall]]) -> list[CallOutcome]:
        names = [name for name, _ in calls]
        return await run_per_capability(self._capabilities, names, [call for _, call in calls])


async def run_per_capability(
    capabilities: Mapping[str, CapabilityClient], names: list[str], calls: list[RunCall]
) -> list[CallOutcome]:
    """Runs the calls of many requests, each capability once over all of its calls. Whatever
    ends one capability's run (an engine down, a runner crossing timing out) ends only the calls
    to that capability; every call gets its own outcome."""
    by_capability: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        by_capability.setdefault(name, []).append(index)

    async def run(name: str, indexes: list[int]) -> Sequence[CallOutcome]:
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
