"""Reading a request's JSON body within the size and nesting limits, whatever Content-Type the
client sent."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from batchjobs.json_depth import JsonTooDeepError, loads_within_depth
from deployments.config import LimitsConfig
from deployments.http.errors import InvalidJsonError, PayloadTooLargeError


async def read_json(request: Request, limits: LimitsConfig) -> Any:
    """Reads at most `limits.max_body_bytes` of body and parses it, whatever Content-Type the
    client sent, refusing JSON nested deeper than `limits.max_json_depth`."""
    max_bytes = limits.max_body_bytes
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
        return loads_within_depth(body, limits.max_json_depth)
    except JsonTooDeepError:
        raise  # a ValueError too, answered by api_error_for as an InvalidJsonError
    except ValueError as error:
        # Besides malformed JSON and bad UTF-8: integers past Python's 4300-digit limit.
        raise InvalidJsonError(f"request body is not valid JSON: {error}") from None
