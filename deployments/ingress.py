"""The HTTP ingress: a Starlette app inside one Serve deployment.

It validates requests (pydantic), plans which capabilities each item needs, runs them on the
capability runner deployments through their handles, and answers JSON in input order. Every
error becomes a JSON body in `errors.py`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capabilities.base import Capability
from capabilities.batching import RunCall, RunReply, merge_calls, split_reply
from capabilities.classification import Classification
from capabilities.errors import CapabilityError
from capabilities.plan import Plan, execute
from deployments.config import AppConfig
from deployments.engine_client import EngineClient
from deployments.errors import (
    ApiError,
    InvalidJsonError,
    MethodNotAllowedError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    handle_error,
)
from deployments.runner_client import RunnerClient
from deployments.schemas import (
    CapabilityCard,
    CapabilityList,
    ClassifyRequest,
    ClassifyResponse,
    ItemResult,
    ModelCard,
    ModelList,
)

READY_TIMEOUT_S = 10.0
REQUEST_ID_HEADER = "x-request-id"


def request_id_of(request: Request) -> str:
    """Serve's proxy sets (or honours) X-Request-ID and echoes it; outside Serve we make one."""
    return request.headers.get(REQUEST_ID_HEADER) or f"req_{uuid.uuid4().hex}"


async def read_json(request: Request, max_bytes: int) -> Any:
    """Reads at most `max_bytes` of body and parses it, whatever Content-Type the client sent."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"request body is {declared} bytes; the limit is {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLargeError(f"request body exceeds the limit of {max_bytes} bytes")
    if not body:
        raise InvalidJsonError("request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidJsonError(f"request body is not valid JSON: {error}") from None


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 405:
        return await handle_error(
            request, MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}")
        )
    return await handle_error(
        request, NotFoundError(f"no route {request.method} {request.url.path}")
    )


class CatchAllMiddleware(BaseHTTPMiddleware):
    """Turns any exception the routes did not expect into a JSON 500, never a stack trace."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        try:
            return await call_next(request)
        except Exception as error:  # noqa: BLE001 - the one place unknown errors are answered
            return await handle_error(request, error)


def build_http_app(routes: list[Route]) -> Starlette:
    handlers = {
        ApiError: handle_error,
        CapabilityError: handle_error,
        ValidationError: handle_error,
        HTTPException: _http_error,
    }
    return Starlette(
        routes=routes,
        middleware=[Middleware(CatchAllMiddleware)],
        exception_handlers=handlers,  # type: ignore[arg-type]
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
            fields.update(output.model_dump(include={"label", "confidence", "top_k"}))
        else:
            fields[name] = classes[name].public_view(output)
    return ItemResult(index=index, id=item_id, **fields)


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(
        self,
        config: AppConfig,
        engines: dict[str, DeploymentHandle],
        runners: dict[str, DeploymentHandle],
        stats: DeploymentHandle,
    ) -> None:
        self._config = config
        self._engines = {name: EngineClient(name, handle) for name, handle in engines.items()}
        self._runners = {name: RunnerClient(name, handle) for name, handle in runners.items()}
        self._stats = stats
        self._registry = config.registry()
        self._classes = {c.name: c.capability_class() for c in config.capabilities}
        self._started = int(time.time())
        self._call_runner.set_max_batch_size(config.ingress.batching.max_batch_size)
        self._call_runner.set_batch_wait_timeout_s(config.ingress.batching.batch_wait_timeout_s)

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_http_app(
            [
                Route("/v1/classify", self.classify, methods=["POST"]),
                Route("/v1/capabilities", self.capabilities, methods=["GET"]),
                Route("/v1/stats", self.stats, methods=["GET"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
            ]
        )

    async def classify(self, request: Request) -> JSONResponse:
        payload = await read_json(request, self._config.limits.max_body_bytes)
        body = ClassifyRequest.model_validate(payload, context={"limits": self._config.limits})
        plan = Plan.of(
            self._registry, body.requested_capabilities(self._config.default_capabilities)
        )
        options = body.options()
        versions: dict[str, str] = {}

        async def run(
            name: str, texts: list[str], parents: dict[str, list[BaseModel]]
        ) -> list[BaseModel]:
            call = RunCall(texts=texts, parents=parents, options=options.get(name, {}))
            reply = self._runners[name].checked(await self._call_runner(name, call))
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
        response = ClassifyResponse(
            id=request_id_of(request),
            model=self._classification_model(strategy),
            strategy=strategy,
            capability_versions=dict(sorted(versions.items())),
            results=results,
        )
        return JSONResponse(response.model_dump(mode="json"))

    # Batches only route calls, and each waits on a runner: many may be in flight at once.
    @serve.batch(max_concurrent_batches=64)
    async def _call_runner(self, names: list[str], calls: list[RunCall]) -> list[RunReply]:
        """Coalesces the runner calls of concurrent requests in this replica: each capability is
        crossed to once per options, not once per request (each crossing costs CPU in Serve)."""
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

    def _classification_model(self, strategy: str | None) -> str | None:
        if strategy is None:
            return None
        settings = self._config.capability("classification").settings
        return settings.get("generative_model" if strategy == "generative" else "embedding_model")

    async def capabilities(self, request: Request) -> JSONResponse:
        infos = await asyncio.gather(*(runner.describe() for runner in self._runners.values()))
        cards = [
            CapabilityCard(
                id=info.name,
                depends_on=info.depends_on,
                default=info.name in self._config.default_capabilities,
                settings_version=info.version,
                settings=info.settings,
            )
            for info in infos
        ]
        listing = CapabilityList(data=cards, levels=self._registry.levels)
        return JSONResponse(listing.model_dump(mode="json"))

    async def stats(self, request: Request) -> JSONResponse:
        snapshot = await self._stats.snapshot.remote()
        return JSONResponse(snapshot.model_dump(mode="json"))

    async def models(self, request: Request) -> JSONResponse:
        cards = [
            ModelCard(id=model.name, created=self._started, runner=model.runner, root=model.model)
            for model in self._config.models
        ]
        return JSONResponse(ModelList(data=cards).model_dump())

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> JSONResponse:
        checks = [engine.ready() for engine in self._engines.values()]
        checks += [runner.describe() for runner in self._runners.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*checks), READY_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - any failure means not ready
            raise NotReadyError(
                f"engines or capability runners are not answering: {type(error).__name__}: {error}"
            ) from None
        return JSONResponse(
            {
                "status": "ready",
                "engines": sorted(self._engines),
                "capabilities": sorted(self._runners),
            }
        )
