"""`/readyz`: whether every engine and capability answers, checked at most once per `ttl_s`.

The route needs no key and a check runs real inference, so its answer is reused for a moment,
failures as well, and probes that arrive together share one check: callers cannot turn it into
load. A failure names what did not answer, never the error's own text (which may name internal
hosts, paths or settings); that goes to the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from async_lru import alru_cache

from deployments.http.errors import NotReadyError
from deployments.http.schemas import ReadyStatus

READY_CACHE_S = 2.0

logger = logging.getLogger("capserve")

Check = Callable[[], Awaitable[object]]
"""Returns when its part answers; raises when it does not."""


class Readiness:
    def __init__(
        self,
        engines: Mapping[str, Check],
        capabilities: Mapping[str, Check],
        ttl_s: float = READY_CACHE_S,
    ) -> None:
        self._checks = {("engine", name): check for name, check in engines.items()} | {
            ("capability", name): check for name, check in capabilities.items()
        }
        self._ready = ReadyStatus(
            engines=sorted(engines), capabilities=sorted(capabilities), checked_at=0
        )
        self._check_all = alru_cache(maxsize=1, ttl=ttl_s)(self._not_answering)

    async def status(self) -> ReadyStatus:
        """The latest answer, or a new check's once it is `ttl_s` old; raises `NotReadyError`
        naming the engines and capabilities that did not answer."""
        checked_at, failed = await self._check_all()
        if failed:
            raise NotReadyError(f"not ready: {', '.join(failed)} not answering; retry shortly")
        return self._ready.model_copy(update={"checked_at": checked_at})

    async def _not_answering(self) -> tuple[float, list[str]]:
        checked_at = time.time()
        # Each check ends within its guarded handle's timeout.
        outcomes = await asyncio.gather(
            *(check() for check in self._checks.values()), return_exceptions=True
        )
        failed = []
        for (kind, name), outcome in zip(self._checks, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                logger.warning("readiness: %s %r failed: %r", kind, name, outcome)
                failed.append(f"{kind} {name!r}")
        return checked_at, failed
