"""The ingress side of a capability runner: one call per capability per request.

Every call ends: within the runner's call timeout, or at once while its circuit breaker is open,
with `ServiceUnavailableError` (a 503 with Retry-After) when the runner is overloaded or down.
"""

from __future__ import annotations

from collections.abc import Mapping

from ray.serve.handle import DeploymentHandle

from capabilities.batching import RunCall, RunReply
from capabilities.errors import InvalidRequestError
from deployments.config import RUNNER_CALLS, AppConfig, CallGuardConfig
from deployments.errors import CapabilityFailedError, ServiceUnavailableError
from deployments.guarded_handle import BUSY_RETRY_AFTER_S, GuardedHandle
from deployments.runner import CapabilityInfo


class RunnerClient:
    def __init__(
        self, name: str, handle: DeploymentHandle, calls: CallGuardConfig = RUNNER_CALLS
    ) -> None:
        self.name = name
        self._runner = GuardedHandle(f"capability {name!r}", handle, calls, ServiceUnavailableError)

    async def run(self, call: RunCall) -> RunReply:
        return await self._runner.call("run", call)

    def checked(self, reply: RunReply) -> RunReply:
        """The reply, or the runner's failure for this call raised as a typed error."""
        failure = reply.failure
        if failure is None:
            return reply
        if failure.kind == "invalid_request":
            raise InvalidRequestError(failure.message, failure.param)
        if failure.kind == "unavailable":
            raise ServiceUnavailableError(
                f"capability {self.name!r} is unavailable: {failure.message}",
                failure.retry_after_s or BUSY_RETRY_AFTER_S,
            )
        raise CapabilityFailedError(f"capability {self.name!r} failed: {failure.message}")

    async def describe(self) -> CapabilityInfo:
        return await self._runner.check("describe")


def runner_clients(
    config: AppConfig, handles: Mapping[str, DeploymentHandle]
) -> dict[str, RunnerClient]:
    """A client per capability runner, guarded as its `deployment.calls` says."""
    return {
        name: RunnerClient(name, handle, config.capability(name).deployment.calls)
        for name, handle in handles.items()
    }
