"""Batch lines answered the way the online endpoints answer them, without HTTP in between."""

from __future__ import annotations

from typing import Any

from batchjobs.executor import LineOutcome
from batchjobs.schemas import BatchUsage
from capabilities.base import BatchLine
from deployments.config import AppConfig
from deployments.dag.classify_service import ClassifyService
from deployments.http.auth import Authenticator
from deployments.http.errors import NotFoundError, api_error_for, error_json
from deployments.http.openai_api import (
    ChatCompletionRequest,
    EmbeddingRequest,
    OpenAIEndpoints,
)
from deployments.http.rate_limit import RateLimiter, Usage
from deployments.http.schemas import ClassifyRequest


def usage_of(body: dict[str, Any]) -> BatchUsage:
    """OpenAI bodies count tokens as prompt/completion; batches count them as input/output."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return BatchUsage()
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return BatchUsage(
        input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion
    )


class BatchLines:
    """The LineHandler of the batch runner: classify lines go through the capability DAG,
    chat and embeddings lines to the engines. With a rate limiter, each line first takes what
    the online request would from its tenant's buckets (the tenant is the key's name), waiting
    until they hold it."""

    def __init__(
        self,
        config: AppConfig,
        classify: ClassifyService,
        openai_endpoints: OpenAIEndpoints,
        rate_limiter: RateLimiter | None,
    ) -> None:
        self._config = config
        self._classify = classify
        self._openai = openai_endpoints
        self._rate_limiter = rate_limiter
        self._authenticator = Authenticator(config.auth.all_keys())

    async def run(
        self,
        endpoint: str,
        body: dict[str, Any],
        request_id: str,
        tenant: str | None,
        line: BatchLine,
        traceparent: str,
    ) -> LineOutcome:
        try:
            answer = await self._answer(endpoint, body, request_id, tenant, line, traceparent)
        except Exception as error:  # noqa: BLE001 - every failure becomes the line's error
            api_error = api_error_for(error, f"batch line {request_id} ({traceparent})")
            return LineOutcome(status_code=api_error.status_code, body=error_json(api_error))
        return LineOutcome(status_code=200, body=answer, usage=usage_of(answer))

    async def _answer(
        self,
        endpoint: str,
        body: dict[str, Any],
        request_id: str,
        tenant: str | None,
        line: BatchLine,
        traceparent: str,
    ) -> dict[str, Any]:
        if endpoint == "/v1/classify":
            request = ClassifyRequest.model_validate(body, context={"limits": self._config.limits})
            await self._take(tenant, request.usage())
            response = await self._classify.classify(request, request_id, traceparent, line)
            return response.model_dump(mode="json")
        if endpoint == "/v1/chat/completions":
            chat = ChatCompletionRequest.model_validate(body)
            await self._take(tenant, self._openai.chat_usage(chat))
            return await self._openai.chat_completions(chat, request_id)
        if endpoint == "/v1/embeddings":
            embeddings = EmbeddingRequest.model_validate(body)
            await self._take(tenant, self._openai.embeddings_usage(embeddings))
            return await self._openai.embeddings(embeddings, request_id)
        raise NotFoundError(f"batch lines cannot target {endpoint}")

    async def _take(self, tenant: str | None, usage: Usage) -> None:
        if self._rate_limiter is not None:
            caller = self._authenticator.principal_of_tenant(tenant)
            await self._rate_limiter.wait_for(caller.name, caller.rate_limits, usage)

    def default_model(self, endpoint: str) -> str | None:
        if endpoint == "/v1/classify":
            settings = self._config.capability("classification").settings
            return settings.get("generative_model") or settings.get("embedding_model")
        runner = "pooling" if endpoint == "/v1/embeddings" else "generate"
        models = [model.name for model in self._config.models if model.runner == runner]
        return models[0] if len(models) == 1 else None
