"""Typed errors of the HTTP surface and their single mapping to status codes and JSON bodies.

Bodies follow OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so the `openai`
SDK and curl users read the same thing.
"""

from __future__ import annotations

import logging
import math

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from batchjobs.files import FileTooLargeError
from batchjobs.json_depth import JsonTooDeepError
from batchjobs.store import StoreUnavailableError
from capabilities.errors import EngineUnavailableError, ExamplesError, InvalidRequestError

logger = logging.getLogger("capserve")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """An error with the status and code it is answered with."""

    status_code = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        """Headers the answer carries besides the JSON body."""
        return {}


class BadRequestError(ApiError):
    status_code, type, code = 400, "invalid_request_error", "invalid_request"


class InvalidJsonError(ApiError):
    status_code, type, code = 400, "invalid_request_error", "invalid_json"


class UnprocessableError(ApiError):
    status_code, type, code = 422, "invalid_request_error", "validation_error"


class PayloadTooLargeError(ApiError):
    status_code, type, code = 413, "invalid_request_error", "payload_too_large"


class StreamNotSupportedError(ApiError):
    status_code, type, code = 400, "invalid_request_error", "stream_not_supported"


class NotFoundError(ApiError):
    status_code, type, code = 404, "invalid_request_error", "not_found"


class ModelNotFoundError(ApiError):
    status_code, type, code = 404, "invalid_request_error", "model_not_found"


class MethodNotAllowedError(ApiError):
    status_code, type, code = 405, "invalid_request_error", "method_not_allowed"


class UnsupportedMediaTypeError(ApiError):
    status_code, type, code = 415, "invalid_request_error", "unsupported_media_type"


class AuthenticationError(ApiError):
    status_code, type, code = 401, "invalid_request_error", "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="capserve"'}


class PermissionDeniedError(ApiError):
    status_code, type, code = 403, "invalid_request_error", "insufficient_scope"


class RetryLaterError(ApiError):
    """A condition that passes: the answer says in Retry-After when to try again."""

    def __init__(self, message: str, retry_after_s: float, param: str | None = None) -> None:
        super().__init__(message, param)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        # Retry-After takes whole seconds; rounding up never invites a retry that fails again.
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class RateLimitedError(RetryLaterError):
    status_code, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class NotReadyError(RetryLaterError):
    status_code, type, code = 503, "server_error", "not_ready"

    def __init__(self, message: str, retry_after_s: float = 5.0) -> None:
        super().__init__(message, retry_after_s)


class ServiceUnavailableError(RetryLaterError):
    """An engine, a runner or the job store is overloaded or down (for engines and runners,
    the circuit breaker answers)."""

    status_code, type, code = 503, "server_error", "service_unavailable"


class EngineOutputError(ApiError):
    """The engine answered, but not in the shape asked for (e.g. truncated JSON)."""

    status_code, type, code = 502, "server_error", "engine_output_error"


def validation_error(error: ValidationError) -> UnprocessableError:
    """One readable message naming every field at fault.

    For example `texts.2: Input should be a string`.
    """
    problems, params = [], []
    for issue in error.errors(include_url=False):
        location = ".".join(str(part) for part in issue["loc"])
        message = issue["msg"].removeprefix("Value error, ")
        problems.append(f"{location}: {message}" if location else message)
        params.append(location)
    return UnprocessableError("; ".join(problems), params[0] if params and params[0] else None)


class InternalError(ApiError):
    """What an unexpected exception is answered as: its details stay in the logs."""

    def __init__(self) -> None:
        super().__init__("internal error; the request id in X-Request-ID locates it in the logs")


def api_error_for(error: Exception, where: str) -> ApiError:
    """The typed error an exception is answered as; unexpected ones are logged here, with
    `where` they happened, and become an InternalError. Every error class of capabilities/,
    batchjobs/ and deployments/ has its answer pinned in tests/unit/test_error_mapping.py."""
    if isinstance(error, ValidationError):
        return validation_error(error)
    if isinstance(error, InvalidRequestError):
        return BadRequestError(str(error), error.param)
    if isinstance(error, ExamplesError):
        return BadRequestError(str(error))
    if isinstance(error, EngineUnavailableError | StoreUnavailableError):
        return ServiceUnavailableError(str(error), error.retry_after_s)
    if isinstance(error, FileTooLargeError):
        return PayloadTooLargeError(str(error), "file")
    if isinstance(error, JsonTooDeepError):
        return InvalidJsonError(f"{error}; flatten it")
    if isinstance(error, ApiError):
        return error
    logger.error("unhandled error in %s", where, exc_info=error)
    return InternalError()


def error_detail(error: ApiError) -> ErrorDetail:
    return ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code)


def error_json(error: ApiError) -> dict[str, object]:
    return ErrorBody(error=error_detail(error)).model_dump()


async def handle_error(request: Request, error: Exception) -> JSONResponse:
    """The one place where exceptions become HTTP answers; nothing else builds error responses."""
    api_error = api_error_for(error, f"{request.method} {request.url.path}")
    return JSONResponse(
        error_json(api_error), status_code=api_error.status_code, headers=api_error.headers()
    )


class CapabilityFailedError(ApiError):
    """A capability raised something it did not mean to; the runner logged the details."""

    status_code, type, code = 500, "server_error", "capability_failed"
