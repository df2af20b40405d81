"""The HTTP ingress: a Starlette app inside one Serve deployment.

It validates requests (pydantic), runs classification against the engine deployments through
their handles, and answers JSON in input order. Every error becomes a JSON body in `errors.py`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from capabilities.classification import Classifier
from capabilities.errors import CapabilityError
from capabilities.examples import EmbeddingCache
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
from deployments.schemas import ClassifyRequest, ClassifyResponse, ItemResult, ModelCard, ModelList

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
        return await handle_error(request, MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}"))
    return await handle_error(request, NotFoundError(f"no route {request.method} {request.url.path}"))


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


@serve.deployment
@serve.ingress()
class Ingress:
    async def __init__(self, config: AppConfig, engines: dict[str, DeploymentHandle]) -> None:
        self._config = config
        self._engines = {name: EngineClient(name, handle) for name, handle in engines.items()}
        settings = config.classification
        self._classifier = Classifier(
            settings,
            embedder=self._engines.get(settings.embedding_model or ""),
            generator=self._engines.get(settings.generative_model or ""),
            cache=EmbeddingCache(config.cache_dir / "embeddings"),
        )
        await self._classifier.load()
        self._started = int(time.time())

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_http_app(
            [
                Route("/v1/classify", self.classify, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
            ]
        )

    async def classify(self, request: Request) -> JSONResponse:
        payload = await read_json(request, self._config.limits.max_body_bytes)
        body = ClassifyRequest.model_validate(payload, context={"limits": self._config.limits})
        strategy = self._classifier.resolve_strategy(body.strategy, body.labels)
        results = await self._classifier.classify(body.all_texts(), strategy, body.labels)
        settings = self._config.classification
        model = settings.generative_model if strategy == "generative" else settings.embedding_model
        response = ClassifyResponse(
            id=request_id_of(request),
            model=model or "",
            strategy=strategy,
            results=[
                ItemResult(index=index, id=item_id, **result.model_dump(exclude={"strategy"}))
                for index, (item_id, result) in enumerate(zip(body.all_ids(), results, strict=True))
            ],
        )
        return JSONResponse(response.model_dump())

    async def models(self, request: Request) -> JSONResponse:
        cards = [
            ModelCard(id=model.name, created=self._started, runner=model.runner, root=model.model)
            for model in self._config.models
        ]
        return JSONResponse(ModelList(data=cards).model_dump())

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> JSONResponse:
        try:
            await asyncio.wait_for(
                asyncio.gather(*(engine.ready() for engine in self._engines.values())),
                READY_TIMEOUT_S,
            )
        except Exception as error:  # noqa: BLE001 - any engine failure means not ready
            raise NotReadyError(f"engines are not answering: {type(error).__name__}: {error}") from None
        return JSONResponse(
            {"status": "ready", "engines": sorted(self._engines), "strategies": self._classifier.strategies}
        )
