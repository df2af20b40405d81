"""The HTTP surface as data: each route's path, method, handler, who may call it, and the pydantic
models of what it reads and answers. The Starlette routes, the API-key check and `/openapi.json`
are all built from this one table, so none of them can drift from what is served."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from capserve.keys import Scope

Access = Literal["public", "any_key"] | Scope
"""`public`: no key needed (health checks); `any_key`: any valid key; else the scope a key needs."""

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class ApiRoute:
    path: str
    method: Literal["GET", "POST", "DELETE"]
    endpoint: Endpoint
    summary: str
    access: Access
    body: type[BaseModel] | None = None
    """The JSON request body."""
    form: type[BaseModel] | None = None
    """The fields of a multipart request body besides its `file`."""
    query: type[BaseModel] | None = None
    answer: type[BaseModel] | None = None
    """The JSON body of a 200 answer; None with `binary` for raw bytes."""
    binary: bool = False
    errors: tuple[int, ...] = ()
    """Statuses the route answers with an error body besides the ones every route may send."""
