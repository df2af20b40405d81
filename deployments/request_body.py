"""Reading a request's JSON body within a size limit, whatever Content-Type the client sent."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from deployments.errors import InvalidJsonError, PayloadTooLargeError


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
