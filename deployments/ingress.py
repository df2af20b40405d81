"""The HTTP ingress: a Starlette app inside one Serve deployment.

It validates requests (pydantic), plans which capabilities each item needs, runs them on the
capability runner deployments through their handles, and answers JSON in input order. Every
error becomes a JSON body in `errors.py`.
"""

from __future__ import annotations

import asyncio
import time
import uuid

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

from batchjobs.files import FileStorage
from batchjobs.sql_store import open_store
from capabilities.errors import CapabilityError
from deployments.batch_api import BatchApi
from deployments.classify_service import ClassifyService
from deployments.config import AppConfig
from deployments.engine_client import EngineClient
from deployments.errors import (
    ApiError,
    MethodNotAllowedError,
    NotFoundError,
    NotReadyError,
    handle_error,
)
from deployments.openai_api import OpenAIEndpoints
from deployments.request_body import read_json
from deployments.runner_client import RunnerClient
from deployments.schemas import (
    CapabilityCard,
    CapabilityList,
    ClassifyRequest,
    ModelCard,
    ModelList,
)

READY_TIMEOUT_S = 10.0
REQUEST_ID_HEADER = "x-request-id"


def request_id_of(request: Request) -> str:
    """Serve's proxy sets (or honours) X-Request-ID and echoes it; outside Serve we make one."""
    return request.headers.get(REQUEST_ID_HEADER) or f"req_{uuid.uuid4().hex}"


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


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(
        self,
        config: AppConfig,
        engines: dict[str, DeploymentHandle],
        runners: dict[str, DeploymentHandle],
        stats: DeploymentHandle,
        batch_runner: DeploymentHandle,
    ) -> None:
        self._config = config
        self._engines = {name: EngineClient(name, handle) for name, handle in engines.items()}
        self._runners = {name: RunnerClient(name, handle) for name, handle in runners.items()}
        self._stats = stats
        self._registry = config.registry()
        self._classify = ClassifyService(config, self._runners, config.ingress.batching)
        self._started = int(time.time())
        self._openai = OpenAIEndpoints(config.models, self._engines)
        self._batch_api = BatchApi(
            config,
            open_store(config.batch_store_url),
            FileStorage(config.batch_dir),
            wake_runner=lambda: batch_runner.wake.remote(),
        )

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_http_app(
            [
                Route("/v1/classify", self.classify, methods=["POST"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/capabilities", self.capabilities, methods=["GET"]),
                Route("/v1/stats", self.stats, methods=["GET"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                *self._batch_api.routes(),
            ]
        )

    async def classify(self, request: Request) -> JSONResponse:
        payload = await read_json(request, self._config.limits.max_body_bytes)
        body = ClassifyRequest.model_validate(payload, context={"limits": self._config.limits})
        response = await self._classify.classify(body, request_id_of(request))
        return JSONResponse(response.model_dump(mode="json"))

    async def chat_completions(self, request: Request) -> JSONResponse:
        payload = await read_json(request, self._config.limits.max_body_bytes)
        return JSONResponse(await self._openai.chat_completions(payload, request_id_of(request)))

    async def embeddings(self, request: Request) -> JSONResponse:
        payload = await read_json(request, self._config.limits.max_body_bytes)
        return JSONResponse(await self._openai.embeddings(payload, request_id_of(request)))

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
