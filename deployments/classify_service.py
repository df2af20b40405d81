"""`/v1/classify` over the capability runners: what the ingress answers online and what the
batch runner answers for each `/v1/classify` line, through the same DAG and batching."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from pydantic import BaseModel
from ray import serve

from capabilities.base import Capability
from capabilities.batching import RunCall, RunReply, merge_calls, split_reply
from capabilities.classification import Classification
from capabilities.plan import Plan, execute
from deployments.config import AppConfig, BatchingConfig
from deployments.runner_client import RunnerClient
from deployments.schemas import ClassifyRequest, ClassifyResponse, ItemResult


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
    """Plans each request's capabilities and runs them on the runners, coalescing the runner
    calls of concurrent requests in this process."""

    def __init__(
        self,
        config: AppConfig,
        runners: Mapping[str, RunnerClient],
        batching: BatchingConfig | None,
    ) -> None:
        """`batching` coalesces the runner calls of concurrent requests. `@serve.batch` works only
        inside a Serve replica, so a driver outside Serve (a `ray job submit` job) passes None and
        calls the runners directly; they still batch on their side."""
        self._config = config
        self._runners = runners
        self._registry = config.registry()
        self._classes = {c.name: c.capability_class() for c in config.capabilities}
        if batching is None:
            self._send = self._call_runner_directly
        else:
            self._call_runner.set_max_batch_size(batching.max_batch_size)
            self._call_runner.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
            self._send = self._call_runner

    async def classify(self, body: ClassifyRequest, request_id: str) -> ClassifyResponse:
        plan = Plan.of(
            self._registry, body.requested_capabilities(self._config.default_capabilities)
        )
        options = body.options()
        versions: dict[str, str] = {}

        async def run(
            name: str, texts: list[str], parents: dict[str, list[BaseModel]]
        ) -> list[BaseModel]:
            call = RunCall(texts=texts, parents=parents, options=options.get(name, {}))
            reply = self._runners[name].checked(await self._send(name, call))
            versions[name] = reply.version
            return reply.outputs or []

        outputs = await execute(plan, body.all_texts(), run)
        results = [
            item_result(index, item_id, item_outputs, self._classes)
            for index, (item_id, item_outputs) in enumerate(
                zip(body.all_ids(), outputs, strict=True)
            )
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

    async def _call_runner_directly(self, name: str, call: RunCall) -> RunReply:
        return await self._runners[name].run(call)

    # Batches only route calls, and each waits on a runner: many may be in flight at once.
    @serve.batch(max_concurrent_batches=64)
    async def _call_runner(self, names: list[str], calls: list[RunCall]) -> list[RunReply]:
        """Coalesces the runner calls of concurrent requests: each capability is crossed to once
        per options, not once per request (each crossing costs CPU in Serve)."""
        replies: list[RunReply] = [RunReply(version="") for _ in calls]
        by_capability: dict[str, list[int]] = {}
        for index, name in enumerate(names):
            by_capability.setdefault(name, []).append(index)

        async def send(name: str, indexes: list[int]) -> None:
            merged, slices = merge_calls([calls[index] for index in indexes])
            merged_replies = await asyncio.gather(*(self._runners[name].run(c) for c in merged))
            for index, (slot, start, end) in zip(indexes, slices, strict=True):
                replies[index] = split_reply(merged_replies[slot], start, end)

        await asyncio.gather(*(send(name, indexes) for name, indexes in by_capability.items()))
        return replies
