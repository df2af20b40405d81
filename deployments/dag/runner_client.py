"""The ingress side of a `placement: deployment` capability: its runner deployment.

The coalesced calls of many requests cross once, as one list, not once per request; each comes
back with its own reply. Every crossing ends: within the runner's call timeout, or at once while
its circuit breaker is open, with `ServiceUnavailableError` (a 503 with Retry-After) when the
runner is overloaded or down.
"""

from __future__ import annotations

from collections.abc import Sequence

from ray.serve.handle import DeploymentHandle

from capabilities.batching import RunCall, RunReply
from capabilities.host import CapabilityInfo
from deployments.calls.guarded_handle import GuardedHandle
from deployments.config import RUNNER_CALLS, CallGuardConfig
from deployments.http.errors import ServiceUnavailableError


class RunnerClient:
    def __init__(
        self, name: str, handle: DeploymentHandle, calls: CallGuardConfig = RUNNER_CALLS
    ) -> None:
        self.name = name
        self._runner = GuardedHandle(f"capability {name!r}", handle, calls, ServiceUnavailableError)

    async def run_many(self, calls: Sequence[RunCall]) -> list[RunReply]:
        return await self._runner.call("run", list(calls))

    async def describe(self) -> CapabilityInfo:
        return await self._runner.check("describe")
