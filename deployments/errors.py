"""Typed errors of the HTTP surface and their single mapping to status codes and JSON bodies.

Bodies follow OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so the `openai`
SDK and curl users read the same thing.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from capabilities.errors import ExamplesError, InvalidRequestError

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


class BadRequestError(ApiError):
    status_code, type, code = 400, "invalid_request_error", "invalid_request"


class InvalidJsonError(ApiError):
    status_code, type, code = 400, "invalid_request_error", "invalid_json"


class UnprocessableError(ApiError):
    status_code, type, code = 422, "invalid_request_error", "validation_error"


class PayloadTooLargeError(ApiError):
    status_code, type, code = 413, "invalid_request_error", "payload_too_large"


class NotFoundError(ApiError):
    status_code, type, code = 404, "invalid_request_error", "not_found"


class MethodNotAllowedError(ApiError):
    status_code, type, code = 405, "invalid_request_error", "method_not_allowed"


class UnsupportedMediaTypeError(ApiError):
    status_code, type, code = 415, "invalid_request_error", "unsupported_media_type"


class NotReadyError(ApiError):
    status_code, type, code = 503, "server_error", "not_ready"


class EngineOutputError(ApiError):
    """The engine answered, but not in the shape asked for (e.g. truncated JSON)."""

    status_code, type, code = 502, "server_error", "engine_output_error"


def _body(status: int, detail: ErrorDetail, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(error=detail).model_dump(), status_code=status, headers=headers)


def validation_error(error: ValidationError) -> UnprocessableError:
    """One readable message naming every field at fault, e.g. `texts.2: Input should be a string`."""
    problems, params = [], []
    for issue in error.errors(include_url=False):
        location = ".".join(str(part) for part in issue["loc"])
        message = issue["msg"].removeprefix("Value error, ")
        problems.append(f"{location}: {message}" if location else message)
        params.append(location)
    return UnprocessableError("; ".join(problems), params[0] if params and params[0] else None)


async def handle_error(request: Request, error: Exception) -> JSONResponse:
    """The one place where exceptions become HTTP answers; nothing else builds error responses."""
    if isinstance(error, ValidationError):
        error = validation_error(error)
    if isinstance(error, InvalidRequestError):
        error = BadRequestError(str(error), error.param)
    if isinstance(error, ExamplesError):
        error = BadRequestError(str(error))
    if isinstance(error, ApiError):
        detail = ErrorDetail(
            message=error.message, type=error.type, param=error.param, code=error.code
        )
        headers = {"Retry-After": "5"} if error.status_code == 503 else None
        return _body(error.status_code, detail, headers)
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return _body(
        500,
        ErrorDetail(
            message="internal error; the request id in X-Request-ID locates it in the logs",
            type="server_error",
            code="internal_error",
        ),
    )


class CapabilityFailedError(ApiError):
    """A capability raised something it did not mean to; the runner logged the details."""

    status_code, type, code = 500, "server_error", "capability_failed"
