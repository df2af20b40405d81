"""Calls through a Serve `DeploymentHandle` that always end: each has timeouts and passes a
circuit breaker, and Ray's overload and dead-replica errors become one typed "unavailable"
error, which the HTTP surface answers as 503 with Retry-After.

Without this a call to a deployment whose only replica died waits in the handle's queue until
Serve has replaced it (minutes for an engine), and so does every request behind it.

Only a replica loading its capabilities as it starts (`loading()`) waits longer: its callees may
be starting with it (an engine loads for minutes on a CPU), so those calls may wait until the
start-up window (`startup_timeout_s` from the handle's creation, i.e. the replica's start) closes.
Requests never do: one reaching a callee that is down fails within the normal timeouts and
counts against the breaker, whether or not the callee ever answered this replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, cast

from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from capabilities.errors import CapabilityError
from deployments.calls.circuit_breaker import CircuitBreaker, CircuitOpenError, Outcome
from deployments.config import CallGuardConfig
from deployments.http.errors import ApiError
from deployments.ray_compat import accepted

# A health check answers quickly or not at all; it never waits a whole call timeout.
CHECK_TIMEOUT_S = 10.0
# The callee's queue is full: it is alive, so only this call fails, not the breaker.
BUSY_RETRY_AFTER_S = 1.0
# A (message, retry_after_s) constructor of the error callers map to 503.
UnavailableError = Callable[[str, float], Exception]
_LOADING: ContextVar[bool] = ContextVar("capserve_loading", default=False)


@contextmanager
def loading() -> Iterator[None]:
    """Marks the calls made inside (tasks started inside included) as the replica loading its
    capabilities, which may wait for their callees until the start-up window closes."""
    token = _LOADING.set(True)
    try:
        yield
    finally:
        _LOADING.reset(token)


class NotAcceptedError(TimeoutError):
    """No replica took the call in time: all are busy, or none is running."""


# The callee is gone or not answering: these count against the breaker.
DOWN_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,  # NotAcceptedError too
    RayActorError,  # ActorDiedError, ActorUnavailableError
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)


def outcome_of(error: BaseException) -> Outcome:
    """What a failed call says about the callee; one that raised its own error still answered."""
    if isinstance(error, DOWN_ERRORS):
        return "failure"
    if isinstance(error, (BackPressureError, asyncio.CancelledError, TaskCancelledError)):
        return "unknown"
    return "success"


class GuardedCallee:
    """Base of every deployment called through a `GuardedHandle`: each call arrives as a stream
    of one item. Serve reports that a replica took a streamed call as soon as it does on both of
    its transports, while over gRPC (RAY_SERVE_THROUGHPUT_OPTIMIZED) a unary call's acceptance
    comes only with its answer, so the accept timeout would cut every call longer than it."""

    async def guarded_call(self, method: str, *args: Any) -> AsyncIterator[Any]:
        yield await getattr(self, method)(*args)


class GuardedHandle:
    """One deployment's handle behind timeouts and a circuit breaker; other errors propagate."""

    def __init__(
        self,
        name: str,
        handle: DeploymentHandle,
        calls: CallGuardConfig,
        unavailable: UnavailableError,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._handle = handle.options(stream=True)
        self._calls = calls
        self._unavailable = unavailable
        self._breaker = CircuitBreaker(name, calls.failure_threshold, calls.cooldown_s, outcome_of)
        self._clock = clock
        # Handles are made as their replica starts: its start-up window closes this much later.
        self._startup_ends = clock() + calls.startup_timeout_s

    async def call(self, method: str, *args: Any) -> Any:
        """The callee's `<method>(*args)` through the breaker, within the accept and call
        timeouts; while the replica loads within its start-up window (`loading()`), within
        what is left of the window where that is longer."""
        accept_s, timeout_s = self._calls.accept_timeout_s, self._calls.timeout_s
        if _LOADING.get():
            window_s = self._startup_ends - self._clock()
            accept_s, timeout_s = max(accept_s, window_s), max(timeout_s, window_s)
        with self._unavailable_errors(accept_s, timeout_s), self._breaker.attempt():
            return await self._send(method, args, accept_s, timeout_s)

    async def check(self, method: str) -> Any:
        """A call that bypasses the breaker: a health check reports the callee as it is, and its
        short timeout must never fail other callers."""
        with self._unavailable_errors(CHECK_TIMEOUT_S, CHECK_TIMEOUT_S):
            return await self._send(method, (), CHECK_TIMEOUT_S, CHECK_TIMEOUT_S)

    async def _send(
        self, method: str, args: Sequence[Any], accept_s: float, timeout_s: float
    ) -> Any:
        # A stream (the handle's options): Ray's `remote` is typed for either kind of response.
        response = cast(
            DeploymentResponseGenerator[Any], self._handle.guarded_call.remote(method, *args)
        )
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    async with asyncio.timeout(accept_s):
                        await accepted(response)
                except TimeoutError:
                    raise NotAcceptedError from None
                # Read to its end: Serve frees the replica's slot when the stream ends.
                (result,) = [item async for item in response]
        except RayTaskError as error:
            # The callee's own typed errors (a caller's bad input) reach the caller as they were
            # raised, not wrapped in Ray's traceback text.
            if isinstance(error.cause, (CapabilityError, ApiError)):
                raise error.cause from None
            raise
        except (TimeoutError, asyncio.CancelledError):
            # Frees the queue place or replica slot that nobody waits for any more.
            response.cancel()
            raise
        return result

    @contextmanager
    def _unavailable_errors(self, accept_s: float, timeout_s: float) -> Iterator[None]:
        retry_after_s = self._breaker.cooldown_s
        try:
            yield
        except CircuitOpenError as error:
            raise self._unavailable(str(error), error.retry_after_s) from None
        except BackPressureError as error:
            raise self._unavailable(
                f"{self.name} is overloaded: {error}", error.retry_after_s or BUSY_RETRY_AFTER_S
            ) from None
        except NotAcceptedError:
            raise self._unavailable(
                f"{self.name} took no call within {accept_s:g} s: it is busy or restarting",
                retry_after_s,
            ) from None
        except TimeoutError:
            raise self._unavailable(
                f"{self.name} did not answer within {timeout_s:g} s", retry_after_s
            ) from None
        except DOWN_ERRORS as error:
            raise self._unavailable(
                f"{self.name} is down ({type(error).__name__})", retry_after_s
            ) from None
