"""The Python client of a capserve service: `Client` (blocking) and `AsyncClient` (asyncio).

    from capserve.client import Client

    with Client("http://127.0.0.1:8000", api_key="sk-capserve-…") as client:
        answer = client.classify(["I still have not received my new card"])
        print(answer.results[0].label, answer.results[0].confidence)

Its only dependencies are httpx and pydantic, so it installs without Ray or vLLM. Answers are
pydantic models; a refused call raises an `ApiError` subclass that names the status, the
service's error code and its message. Calls the service turns away for a while (429, 503) are
sent again after the `Retry-After` it names; calls that are safe to repeat (reads and classify)
are also sent again after a dropped connection or a gateway error (502, 504).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, Self, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from batchjobs.schemas import BatchObject, FileObject, OutputLine
from capserve.tracing import HEADER as TRACEPARENT_HEADER
from capserve.tracing import TraceParent

__all__ = [
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "BatchObject",
    "CapabilityList",
    "ClassifyResponse",
    "Client",
    "FileObject",
    "InvalidRequestError",
    "ItemResult",
    "Limits",
    "NotFoundError",
    "OutputLine",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "ServerUnreachableError",
]

DEFAULT_URL = "http://127.0.0.1:8000"
Strategy = Literal["knn", "zero_shot", "generative", "trained_head", "classifier"]
T = TypeVar("T")


class LabelScore(BaseModel):
    label: str
    score: float


class ItemResult(BaseModel):
    """One text's answer. Classification fields are set when the text asked for
    classification; every other capability it asked for is in `outputs`."""

    model_config = ConfigDict(extra="allow")

    index: int
    id: str | None = None
    label: str | None = None
    confidence: float | None = None
    top_k: list[LabelScore] | None = None
    decoding: str | None = None

    @property
    def outputs(self) -> dict[str, Any]:
        """The other capabilities' outputs by name: `recommendations`, `alerts`, `gates`, …"""
        return dict(self.model_extra or {})


class ClassifyResponse(BaseModel):
    id: str
    object: str = "classification.list"
    model: str | None = None
    strategy: str | None = None
    capability_versions: dict[str, str] = Field(default_factory=dict)
    results: list[ItemResult]


class Limits(BaseModel):
    """What one request may hold; the service's defaults when it does not say."""

    max_items_per_request: int = 256
    max_text_chars: int = 2000
    max_body_bytes: int = 2_000_000


class CapabilityCard(BaseModel):
    id: str
    depends_on: list[str]
    default: bool
    settings_version: str
    settings: dict[str, Any]


class CapabilityList(BaseModel):
    data: list[CapabilityCard]
    levels: list[list[str]] = Field(default_factory=list)
    limits: Limits = Limits()

    @property
    def names(self) -> list[str]:
        return [card.id for card in self.data]


class HealthStatus(BaseModel):
    status: str


class ReadyStatus(BaseModel):
    status: str
    engines: list[str]
    capabilities: list[str]


class CapserveError(Exception):
    """Anything this client raises."""


class ServerUnreachableError(CapserveError):
    """No answer: the connection failed or timed out, for longer than the retry policy waits."""


class ApiError(CapserveError):
    """The service answered with an error; `code` is its machine-readable reason."""

    def __init__(
        self,
        status_code: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code or 'error'}: {message}")
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.request_id = request_id
        self.retry_after_s = retry_after_s


class InvalidRequestError(ApiError):
    """400, 413, 415, 422: the request itself is at fault; sending it again will not help."""


class AuthenticationError(ApiError):
    """401: no key, or a key the service does not know."""


class PermissionDeniedError(ApiError):
    """403: the key lacks the scope the call needs."""


class NotFoundError(ApiError):
    """404: no such route, file or batch (or one of another key)."""


class RateLimitError(ApiError):
    """429 for longer than the retry policy waits."""


class ServerError(ApiError):
    """5xx: the service failed or stayed unavailable for longer than the retry policy waits."""


def _error_class(status_code: int) -> type[ApiError]:
    by_status: dict[int, type[ApiError]] = {
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        429: RateLimitError,
    }
    if status_code in by_status:
        return by_status[status_code]
    return ServerError if status_code >= 500 else InvalidRequestError


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_of(response: httpx.Response) -> ApiError:
    """The error an answer stands for, with the service's message and code when it sent them."""
    try:
        detail = response.json()["error"]
        message, code, param = detail["message"], detail.get("code"), detail.get("param")
    except (ValueError, KeyError, TypeError):
        message, code, param = response.text[:500] or response.reason_phrase, None, None
    return _error_class(response.status_code)(
        response.status_code,
        message,
        code,
        param,
        response.headers.get("x-request-id"),
        _retry_after_s(response),
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How long one call keeps trying while the service turns it away or cannot be reached."""

    timeout_s: float = 300.0
    """While the service answers 429 or 503: give up once the next try would be later than
    this many seconds after the first."""
    lost_tries: int = 5
    """Tries, for a call safe to repeat, while no answer comes (the connection fails, a
    gateway answers 502 or 504): a restarting service is back within them, a stopped one is
    reported in seconds."""
    max_backoff_s: float = 30.0
    """The longest wait between tries when the service names none."""


# Refused before any work was done: any call may be sent again.
_TURNED_AWAY = frozenset({429, 503})
# The answer was lost on the way: only calls that are safe to repeat are sent again.
_LOST = frozenset({502, 504})


class _Retries:
    """The waits of one call: the service's Retry-After when it names one, else exponential
    backoff, each with a little jitter so concurrent callers do not return in step."""

    def __init__(self, policy: RetryPolicy, repeatable: bool) -> None:
        self._policy = policy
        self._repeatable = repeatable
        self._started = time.monotonic()
        self._attempt = 0
        self._lost = 0

    def wait_after(self, response: httpx.Response | None) -> float | None:
        """Seconds to wait before the next try after `response` (None: no answer came), or
        None when this outcome is final."""
        status = None if response is None else response.status_code
        if status in _TURNED_AWAY:
            assert response is not None
            named = _retry_after_s(response)
        elif self._repeatable and (status is None or status in _LOST):
            self._lost += 1
            if self._lost >= self._policy.lost_tries:
                return None
            named = None
        else:
            return None
        backoff = min(self._policy.max_backoff_s, 0.5 * 2**self._attempt)
        wait = (named if named is not None else backoff) * random.uniform(1.0, 1.1)
        self._attempt += 1
        if time.monotonic() - self._started + wait > self._policy.timeout_s:
            return None
        return wait


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One API call: its request, whether it is safe to repeat, and how to read its answer."""

    request: httpx.Request
    read: Callable[[httpx.Response], T]
    repeatable: bool


def _model(model: type[BaseModel]) -> Callable[[httpx.Response], Any]:
    return lambda response: model.model_validate_json(response.content)


def _answer(call: _Call[T], response: httpx.Response | None, error: Exception | None) -> T:
    if response is None:
        raise ServerUnreachableError(
            f"no answer to {call.request.method} {call.request.url} "
            f"({type(error).__name__}: {error}); is the service running?"
        ) from error
    if response.is_error:
        raise error_of(response)
    return call.read(response)


def output_lines(content: bytes) -> list[OutputLine]:
    """The lines of a batch output or error file."""
    return [OutputLine.model_validate_json(line) for line in content.splitlines() if line.strip()]


class _Calls:
    """The requests of every call, shared by the blocking and the asyncio client."""

    _http: httpx.Client | httpx.AsyncClient

    def _call(
        self,
        method: str,
        path: str,
        read: Callable[[httpx.Response], T],
        *,
        repeatable: bool,
        traceparent: TraceParent | str | None = None,
        request_id: str | None = None,
        **content: Any,
    ) -> _Call[T]:
        headers = {TRACEPARENT_HEADER: str(traceparent or TraceParent.new())}
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        request = self._http.build_request(method, path, headers=headers, **content)
        return _Call(request, read, repeatable)

    def _classify(
        self,
        texts: Sequence[str],
        capabilities: Sequence[str] | None,
        strategy: Strategy | None,
        labels: Sequence[str | dict[str, str]] | None,
        request_id: str | None,
        traceparent: TraceParent | str | None,
    ) -> _Call[ClassifyResponse]:
        body: dict[str, Any] = {"texts": list(texts)}
        if capabilities:
            body["capabilities"] = list(capabilities)
        if strategy is not None:
            body["strategy"] = strategy
        if labels:
            body["labels"] = list(labels)
        return self._call(
            "POST",
            "/v1/classify",
            _model(ClassifyResponse),
            repeatable=True,
            traceparent=traceparent,
            request_id=request_id,
            json=body,
        )

    def _get(self, path: str, model: type[BaseModel]) -> _Call[Any]:
        return self._call("GET", path, _model(model), repeatable=True)

    def _upload(self, content: bytes | Path, filename: str | None) -> _Call[FileObject]:
        if isinstance(content, Path):
            filename = filename or content.name
            content = content.read_bytes()
        files = {"file": (filename or "input.jsonl", content, "application/jsonl")}
        return self._call(
            "POST",
            "/v1/files",
            _model(FileObject),
            repeatable=False,
            files=files,
            data={"purpose": "batch"},
        )

    def _create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        metadata: dict[str, str] | None,
        traceparent: TraceParent | str | None,
    ) -> _Call[BatchObject]:
        body: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
        }
        if metadata:
            body["metadata"] = metadata
        return self._call(
            "POST",
            "/v1/batches",
            _model(BatchObject),
            repeatable=False,
            traceparent=traceparent,
            json=body,
        )

    def _cancel_batch(self, batch_id: str) -> _Call[BatchObject]:
        return self._call(
            "POST", f"/v1/batches/{batch_id}/cancel", _model(BatchObject), repeatable=True
        )

    def _file_content(self, file_id: str) -> _Call[bytes]:
        return self._call(
            "GET", f"/v1/files/{file_id}/content", lambda r: r.content, repeatable=True
        )


def _http_options(
    base_url: str, api_key: str | None, timeout_s: float, transport: Any
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return {
        "base_url": base_url,
        "headers": headers,
        "timeout": timeout_s,
        "transport": transport,
    }


class Client(_Calls):
    """A blocking client. `transport` is httpx's (tests pass an `httpx.MockTransport`)."""

    _http: httpx.Client

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(**_http_options(base_url, api_key, timeout_s, transport))
        self._retry = retry

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        retries = _Retries(self._retry, call.repeatable)
        while True:
            response, error = None, None
            try:
                response = self._http.send(call.request)
            except httpx.TransportError as failed:
                error = failed
            wait = retries.wait_after(response)
            if wait is None:
                return _answer(call, response, error)
            time.sleep(wait)

    def classify(
        self,
        texts: Sequence[str],
        *,
        capabilities: Sequence[str] | None = None,
        strategy: Strategy | None = None,
        labels: Sequence[str | dict[str, str]] | None = None,
        request_id: str | None = None,
        traceparent: TraceParent | str | None = None,
    ) -> ClassifyResponse:
        """Classifies `texts` (at most the service's `max_items_per_request`); `capabilities`
        asks for more than the default, `labels` classifies against an ad-hoc label set."""
        call = self._classify(texts, capabilities, strategy, labels, request_id, traceparent)
        return self._send(call)

    def capabilities(self) -> CapabilityList:
        """The capabilities the service runs, and its per-request limits."""
        return self._send(self._get("/v1/capabilities", CapabilityList))

    def health(self) -> HealthStatus:
        return self._send(self._get("/healthz", HealthStatus))

    def ready(self) -> ReadyStatus:
        """Raises `ServerError` (503) until every engine and capability answers."""
        return self._send(self._get("/readyz", ReadyStatus))

    def upload_file(self, content: bytes | Path, filename: str | None = None) -> FileObject:
        """Uploads a batch input file (JSONL, one request per line)."""
        return self._send(self._upload(content, filename))

    def create_batch(
        self,
        input_file_id: str,
        endpoint: str = "/v1/classify",
        metadata: dict[str, str] | None = None,
        traceparent: TraceParent | str | None = None,
    ) -> BatchObject:
        """Starts a batch; every output line carries a span of `traceparent`'s trace."""
        return self._send(self._create_batch(input_file_id, endpoint, metadata, traceparent))

    def batch(self, batch_id: str) -> BatchObject:
        return self._send(self._get(f"/v1/batches/{batch_id}", BatchObject))

    def cancel_batch(self, batch_id: str) -> BatchObject:
        return self._send(self._cancel_batch(batch_id))

    def file_content(self, file_id: str) -> bytes:
        return self._send(self._file_content(file_id))

    def wait_batch(
        self,
        batch_id: str,
        poll_interval_s: float = 1.0,
        on_update: Callable[[BatchObject], None] | None = None,
    ) -> BatchObject:
        """The batch once it has ended; `on_update` sees it at every poll."""
        while True:
            batch = self.batch(batch_id)
            if on_update is not None:
                on_update(batch)
            if batch.terminal:
                return batch
            time.sleep(poll_interval_s)


class AsyncClient(_Calls):
    """The same calls as `Client`, awaited."""

    _http: httpx.AsyncClient

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        self._http = httpx.AsyncClient(
            **_http_options(base_url, api_key, timeout_s, transport),
            limits=httpx.Limits(max_connections=max_connections),
        )
        self._retry = retry

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        retries = _Retries(self._retry, call.repeatable)
        while True:
            response, error = None, None
            try:
                response = await self._http.send(call.request)
            except httpx.TransportError as failed:
                error = failed
            wait = retries.wait_after(response)
            if wait is None:
                return _answer(call, response, error)
            await asyncio.sleep(wait)

    async def classify(
        self,
        texts: Sequence[str],
        *,
        capabilities: Sequence[str] | None = None,
        strategy: Strategy | None = None,
        labels: Sequence[str | dict[str, str]] | None = None,
        request_id: str | None = None,
        traceparent: TraceParent | str | None = None,
    ) -> ClassifyResponse:
        call = self._classify(texts, capabilities, strategy, labels, request_id, traceparent)
        return await self._send(call)

    async def capabilities(self) -> CapabilityList:
        return await self._send(self._get("/v1/capabilities", CapabilityList))

    async def health(self) -> HealthStatus:
        return await self._send(self._get("/healthz", HealthStatus))

    async def ready(self) -> ReadyStatus:
        return await self._send(self._get("/readyz", ReadyStatus))

    async def upload_file(self, content: bytes | Path, filename: str | None = None) -> FileObject:
        return await self._send(self._upload(content, filename))

    async def create_batch(
        self,
        input_file_id: str,
        endpoint: str = "/v1/classify",
        metadata: dict[str, str] | None = None,
        traceparent: TraceParent | str | None = None,
    ) -> BatchObject:
        return await self._send(self._create_batch(input_file_id, endpoint, metadata, traceparent))

    async def batch(self, batch_id: str) -> BatchObject:
        return await self._send(self._get(f"/v1/batches/{batch_id}", BatchObject))

    async def cancel_batch(self, batch_id: str) -> BatchObject:
        return await self._send(self._cancel_batch(batch_id))

    async def file_content(self, file_id: str) -> bytes:
        return await self._send(self._file_content(file_id))

    async def wait_batch(
        self,
        batch_id: str,
        poll_interval_s: float = 1.0,
        on_update: Callable[[BatchObject], None] | None = None,
    ) -> BatchObject:
        while True:
            batch = await self.batch(batch_id)
            if on_update is not None:
                on_update(batch)
            if batch.terminal:
                return batch
            await asyncio.sleep(poll_interval_s)
