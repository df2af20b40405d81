"""The ingress side of a capability runner: one call per capability per request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from ray.serve.handle import DeploymentHandle

from capabilities.batching import RunCall, RunReply
from capabilities.errors import InvalidRequestError
from deployments.errors import CapabilityFailedError
from deployments.runner import CapabilityInfo


class RunnerClient:
    def __init__(self, name: str, handle: DeploymentHandle) -> None:
        self.name = name
        self._handle = handle

    async def run(
        self, texts: Sequence[str], parents: dict[str, list[BaseModel]], options: dict[str, Any]
    ) -> RunReply:
        """Outputs in text order; the runner's failure for this call, raised as a typed error."""
        call = RunCall(texts=list(texts), parents=parents, options=options)
        reply: RunReply = await self._handle.run.remote(call)
        if reply.failure is None:
            return reply
        if reply.failure.kind == "invalid_request":
            raise InvalidRequestError(reply.failure.message, reply.failure.param)
        raise CapabilityFailedError(f"capability {self.name!r} failed: {reply.failure.message}")

    async def describe(self) -> CapabilityInfo:
        return await self._handle.describe.remote()
