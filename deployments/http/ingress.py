"""The HTTP ingress: a Starlette app inside one Serve deployment.

It validates requests (pydantic), plans which capabilities each item needs, runs them in this
replica (inline) or on their runner deployments, coalescing concurrent requests, and answers JSON
in input order, or JSON Lines as items complete when asked to stream. Every error becomes a JSON
body in `errors.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
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
from starlette.routing import BaseRoute, Route
from starlette.types import Lifespan

from batchjobs.files import FileStorage
from batchjobs.store import StoreUnavailableError
from batchjobs.store_opener import StoreOpener
from capabilities.errors import CapabilityError
from capserve.tracing import HEADER as TRACE_HEADER
from capserve.tracing import TraceParent
from deployments.config import AppConfig
from deployments.dag.capability_clients import close_inline, configure_inline
from deployments.dag.classify_service import ClassifyWiring
from deployments.http.api_docs import docs_routes
from deployments.http.auth import Authenticator, principal_of
from deployments.http.batch_api import BatchApi
from deployments.http.errors import (
    ApiError,
    BadRequestError,
    MethodNotAllowedError,
    NotFoundError,
    handle_error,
)
from deployments.http.openai_api import (
    ChatCompletion,
    ChatCompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    OpenAIEndpoints,
)
from deployments.http.openapi import OPENAPI_PATH, OpenApiDocument, openapi_endpoint
from deployments.http.rate_limit import RateLimiter, Usage
from deployments.http.readiness import Readiness
from deployments.http.request_body import read_json
from deployments.http.request_timing import RequestObserver, RequestTimingMiddleware
from deployments.http.routes import ApiRoute, Endpoint
from deployments.http.schemas import (
    CapabilityCard,
    CapabilityList,
    ClassifyRequest,
    ClassifyResponse,
    ClassifyStreamLine,
    HealthStatus,
    ModelCard,
    ModelList,
    ReadyStatus,
)
from deployments.http.streaming import ndjson_response, wants_stream
from deployments.telemetry.replica_telemetry import IngressTelemetry
from deployments.telemetry.stats import StatsSnapshot, stats_reader

REQUEST_ID_HEADER = "x-request-id"
# Serve's logger: its lines go to the replica's log with the request id and route.
serve_logger = logging.getLogger("ray.serve")


def request_id_of(request: Request) -> str:
    """Serve's proxy sets (or honours) X-Request-ID and echoes it; outside Serve we make one."""
    return request.headers.get(REQUEST_ID_HEADER) or f"req_{uuid.uuid4().hex}"


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 405:
        return await handle_error(
            request, MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}")
        )
    if error.status_code == 404:
        return await handle_error(
            request, NotFoundError(f"no route {request.method} {request.url.path}")
        )
    # Starlette's own 400s, e.g. a multipart body it cannot parse.
    return await handle_error(request, BadRequestError(f"malformed request: {error.detail}"))


class CatchAllMiddleware(BaseHTTPMiddleware):
    """Turns any exception the routes did not expect into a JSON 500, never a stack trace."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        try:
            return await call_next(request)
        except Exception as error:  # noqa: BLE001 - the one place unknown errors are answered
            return await handle_error(request, error)


def _guarded(route: ApiRoute, authenticator: Authenticator, rate_limiter: RateLimiter) -> Endpoint:
    """The route's endpoint behind the key check and the caller's request rate limit; the
    endpoint finds its caller with `principal_of`."""

    async def endpoint(request: Request) -> Response:
        principal = authenticator.authenticate(request.headers.get("authorization"), route.access)
        request.state.principal = principal
        if route.access != "public":
            await rate_limiter.admit(principal.name, principal.rate_limits, "requests", 1)
        return await route.endpoint(request)

    return endpoint


def build_http_app(
    routes: Sequence[ApiRoute],
    authenticator: Authenticator,
    rate_limiter: RateLimiter,
    observer: RequestObserver,
    lifespan: Lifespan[Starlette],
    pages: Sequence[BaseRoute] = (),
) -> Starlette:
    """The Starlette app of `routes`; `observer` sees every request once, timed outside all
    other middleware; `lifespan` runs the app's background work. `pages` are served as they are,
    outside the route table: public, and not in the API's document."""
    api = [
        Route(route.path, _guarded(route, authenticator, rate_limiter), methods=[route.method])
        for route in routes
    ]
    handlers = {
        ApiError: handle_error,
        CapabilityError: handle_error,
        StoreUnavailableError: handle_error,
        ValidationError: handle_error,
        HTTPException: _http_error,
    }
    return Starlette(
        routes=[*api, *pages],
        middleware=[
            Middleware(RequestTimingMiddleware, observer=observer),
            Middleware(CatchAllMiddleware),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
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
        wiring = ClassifyWiring.of(config, engines, runners, stats, config.ingress.batching)
        self._engines = wiring.engines
        self._inline = wiring.inline
        self._capabilities = wiring.capabilities
        self._classify = wiring.service
        self._stats = stats_reader(stats)
        self._telemetry = IngressTelemetry(stats)
        self._registry = config.registry()
        self._started = int(time.time())
        self._authenticator = Authenticator(config.auth.all_keys())
        self._rate_limiter = RateLimiter(config.rate_limits)
        self._openai = OpenAIEndpoints(config.models, self._engines, config.limits)
        self._readiness = Readiness(
            {name: engine.ready for name, engine in self._engines.items()},
            {name: capability.describe for name, capability in self._capabilities.items()},
        )
        # Opened by the first batch route that needs it: online routes never wait on it.
        self._batch_api = BatchApi(
            config,
            StoreOpener(config.batch_store_url, config.batch.store_retry_s),
            FileStorage(config.batch_dir),
            wake_runner=lambda: batch_runner.wake.remote(),
        )

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Settings of the inline capabilities, by name (live-reloadable, as a runner's are)."""
        await configure_inline(self._inline, user_config, "Ingress")

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_http_app(
            self.api_routes(),
            self._authenticator,
            self._rate_limiter,
            self._telemetry,
            self._reporting,
            pages=docs_routes(OPENAPI_PATH, "capserve API"),
        )

    @asynccontextmanager
    async def _reporting(self, app: Starlette) -> AsyncIterator[None]:
        """Serve runs the app's lifespan in the replica once it is built: the replica reports
        itself and flushes request latencies to /v1/stats for as long as it serves. Its end,
        as the replica shuts down, waits for pending alert deliveries."""
        tasks = self._telemetry.start()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await close_inline(self._inline)

    def api_routes(self) -> list[ApiRoute]:
        return [
            ApiRoute(
                "/v1/classify",
                "POST",
                self.classify,
                "Classify texts; recommendations, alerts and gates on request",
                "classify",
                body=ClassifyRequest,
                answer=ClassifyResponse,
                lines=ClassifyStreamLine,
                errors=(400, 413, 422),
            ),
            ApiRoute(
                "/v1/chat/completions",
                "POST",
                self.chat_completions,
                "OpenAI chat completion on a generative model",
                "classify",
                body=ChatCompletionRequest,
                answer=ChatCompletion,
                errors=(400, 404, 413, 422),
            ),
            ApiRoute(
                "/v1/embeddings",
                "POST",
                self.embeddings,
                "OpenAI embeddings on an embedding model",
                "classify",
                body=EmbeddingRequest,
                answer=EmbeddingList,
                errors=(400, 404, 413, 422),
            ),
            ApiRoute(
                "/v1/capabilities",
                "GET",
                self.capabilities,
                "The capabilities, their dependencies and live settings",
                "any_key",
                answer=CapabilityList,
            ),
            ApiRoute(
                "/v1/stats",
                "GET",
                self.stats,
                "Capability runs, batch sizes and cache hits; latency percentiles per route "
                "over the last minute; live replicas, their nodes, and engines' GPUs",
                "admin",
                answer=StatsSnapshot,
            ),
            ApiRoute(
                "/v1/models", "GET", self.models, "The served models", "any_key", answer=ModelList
            ),
            ApiRoute("/healthz", "GET", self.healthz, "Liveness", "public", answer=HealthStatus),
            ApiRoute(
                "/readyz",
                "GET",
                self.readyz,
                "Readiness: engines and capabilities answer",
                "public",
                answer=ReadyStatus,
            ),
            *self._batch_api.routes(),
            ApiRoute(
                OPENAPI_PATH,
                "GET",
                openapi_endpoint(self.api_routes),
                "This API's OpenAPI 3.1 document",
                "public",
                answer=OpenApiDocument,
            ),
        ]

    async def classify(self, request: Request) -> Response:
        payload = await read_json(request, self._config.limits)
        body = ClassifyRequest.model_validate(payload, context={"limits": self._config.limits})
        priority = principal_of(request).priority_for(body.priority)
        await self._admit(request, body.usage())
        request_id = request_id_of(request)
        trace = TraceParent.parse(request.headers.get(TRACE_HEADER))
        if trace is not None:
            # Serve stamps the line with the request id, so the caller's trace id finds it.
            serve_logger.info("classify: %d texts, traceparent %s", len(body.all_texts()), trace)
        trace_header = str(trace) if trace else None
        if wants_stream(body.stream, request.headers.get("accept")):
            return ndjson_response(self._classify.stream(body, request_id, priority, trace_header))
        response = await self._classify.classify(body, request_id, priority, trace_header)
        return JSONResponse(response.model_dump(mode="json"))

    async def chat_completions(self, request: Request) -> JSONResponse:
        payload = await read_json(request, self._config.limits)
        body = ChatCompletionRequest.model_validate(payload)
        priority = principal_of(request).priority_for(body.priority)
        await self._admit(request, self._openai.chat_usage(body))
        answer = await self._openai.chat_completions(body, request_id_of(request), priority)
        return JSONResponse(answer)

    async def embeddings(self, request: Request) -> JSONResponse:
        payload = await read_json(request, self._config.limits)
        body = EmbeddingRequest.model_validate(payload)
        priority = principal_of(request).priority_for(body.priority)
        await self._admit(request, self._openai.embeddings_usage(body))
        answer = await self._openai.embeddings(body, request_id_of(request), priority)
        return JSONResponse(answer)

    async def _admit(self, request: Request, usage: Usage) -> None:
        caller = principal_of(request)
        await self._rate_limiter.admit_usage(caller.name, caller.rate_limits, usage)

    async def capabilities(self, request: Request) -> JSONResponse:
        infos = await asyncio.gather(*(c.describe() for c in self._capabilities.values()))
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
        listing = CapabilityList(
            data=cards, levels=self._registry.levels, limits=self._config.limits
        )
        return JSONResponse(listing.model_dump(mode="json"))

    async def stats(self, request: Request) -> JSONResponse:
        snapshot = await self._stats.call("snapshot")
        return JSONResponse(snapshot.model_dump(mode="json"))

    async def models(self, request: Request) -> JSONResponse:
        cards = [
            ModelCard(id=model.name, created=self._started, runner=model.runner, root=model.model)
            for model in self._config.models
        ]
        return JSONResponse(ModelList(data=cards).model_dump())

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse(HealthStatus().model_dump())

    async def readyz(self, request: Request) -> JSONResponse:
        return JSONResponse((await self._readiness.status()).model_dump())
