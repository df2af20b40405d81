"""Times every HTTP request once, for Prometheus and for `/v1/stats` alike.

An ASGI middleware outside all others, so it sees every answer the app gives, the JSON 500s of
the catch-all included. It names a request by the route template Starlette matched
(`/v1/files/{file_id}`, never the raw path, so labels stay few); a path no route knows is `other`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNKNOWN_ENDPOINT = "other"


@dataclass(frozen=True, slots=True)
class RequestObservation:
    endpoint: str
    method: str
    status: int
    seconds: float


class RequestObserver(Protocol):
    def started(self) -> None: ...

    def finished(self, observation: RequestObservation) -> None:
        """Called on the request's task after its answer was sent: must not block or raise."""
        ...


def endpoint_of(scope: Scope) -> str:
    """The path template of the route Starlette's router matched (it stores the route in the
    scope), or `other`."""
    return getattr(scope.get("route"), "path", None) or UNKNOWN_ENDPOINT


class RequestTimingMiddleware:
    def __init__(self, app: ASGIApp, observer: RequestObserver) -> None:
        self._app = app
        self._observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees when no answer starts

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self._observer.started()
        try:
            await self._app(scope, receive, send_and_note)
        finally:
            self._observer.finished(
                RequestObservation(
                    endpoint=endpoint_of(scope),
                    method=scope["method"],
                    status=status,
                    seconds=time.perf_counter() - started,
                )
            )
