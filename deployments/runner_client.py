"""The ingress side of a capability runner: one call per capability per request."""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle

from capabilities.batching import RunCall, RunReply
from capabilities.errors import InvalidRequestError
from deployments.errors import CapabilityFailedError
from deployments.runner import CapabilityInfo


class RunnerClient:
    def __init__(self, name: str, handle: DeploymentHandle) -> None:
        self.name = name
        self._handle = handle

    async def run(self, call: RunCall) -> RunReply:
        return await self._handle.run.remote(call)

    def checked(self, reply: RunReply) -> RunReply:
        """The reply, or the runner's failure for this call raised as a typed error."""
        if reply.failure is None:
            return reply
        if reply.failure.kind == "invalid_request":
            raise InvalidRequestError(reply.failure.message, reply.failure.param)
        raise CapabilityFailedError(f"capability {self.name!r} failed: {reply.failure.message}")

    async def describe(self) -> CapabilityInfo:
        return await self._handle.describe.remote()
