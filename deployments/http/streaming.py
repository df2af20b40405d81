"""Answers streamed as JSON Lines (`application/x-ndjson`): one JSON object per line, each sent
the moment it is ready.

Nothing on the default path holds lines back: Serve's HAProxy ingress forwards response chunks as
they come (its config has no response buffering, and `option http-no-delay` is on by default),
and so does Serve's Python proxy."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from pydantic import BaseModel
from starlette.responses import StreamingResponse

NDJSON = "application/x-ndjson"
# nginx, a common ingress in front of Kubernetes services, buffers whole answers unless told not to.
UNBUFFERED = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}


def wants_stream(stream: bool | None, accept: str | None) -> bool:
    """A body's `stream` decides; left out, an Accept header naming JSON Lines asks for them."""
    if stream is not None:
        return stream
    media_types = (part.split(";", 1)[0].strip().lower() for part in (accept or "").split(","))
    return NDJSON in media_types


async def ndjson_lines(lines: AsyncGenerator[BaseModel]) -> AsyncIterator[bytes]:
    """Each model as one line: JSON escapes line breaks inside strings, so a line is an object.
    Closing this closes `lines`, so work behind them stops when the client goes away."""
    async with aclosing(lines):
        async for line in lines:
            yield line.model_dump_json().encode() + b"\n"


def ndjson_response(lines: AsyncGenerator[BaseModel]) -> StreamingResponse:
    return StreamingResponse(ndjson_lines(lines), media_type=NDJSON, headers=UNBUFFERED)
