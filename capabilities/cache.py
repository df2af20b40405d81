"""Result cache for capability outputs: an in-process LRU in front of an optional shared Redis.

Keys come from `cache_key`, which folds in the capability's `version`, so a settings or file
change never serves an answer computed under the old ones. Values are opaque bytes; callers
serialise outputs. The shared layer is an optimisation only: when Redis is down or failing, reads
are misses and writes are dropped, with a rate-limited warning, and requests go on without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, cast
from urllib.parse import urlsplit

import redis.asyncio as redis
from cachetools import TTLCache
from pydantic import BaseModel, ConfigDict, Field, computed_field
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# A failing Redis fails every batch; one warning per this many seconds says so without flooding.
WARNING_INTERVAL_S = 30.0

logger = logging.getLogger("capserve.cache")


def cache_key(capability: str, version: str, options_key: str, input_key: str) -> str:
    """Hex SHA-256 naming one capability output: same parts, same key; any part differs, not."""
    # JSON keeps the parts apart: ("a", "bc") and ("ab", "c") must not collide.
    material = json.dumps([capability, version, options_key, input_key])
    return hashlib.sha256(material.encode()).hexdigest()


class CacheStats(BaseModel):
    """Lookups by outcome since the cache was built, for /v1/stats."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    local_hits: int = 0
    shared_hits: int = 0
    misses: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def hit_rate(self) -> float:
        """Share of lookups answered by either layer; 0 before the first lookup."""
        hits = self.local_hits + self.shared_hits
        total = hits + self.misses
        return hits / total if total else 0.0


class ResultCache(Protocol):
    """Bytes by key; a miss is a key absent from `get_many`'s answer, never an error."""

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]: ...

    async def set_many(self, items: Mapping[str, bytes]) -> None: ...

    def stats(self) -> CacheStats: ...

    async def close(self) -> None: ...


class LocalCache:
    """In-process LRU whose entries expire `ttl_s` after they were set."""

    def __init__(
        self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, not {ttl_s}")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: TTLCache[str, bytes] = TTLCache(max_entries, ttl_s, timer=clock)
        self._hits = 0
        self._misses = 0

    def __len__(self) -> int:
        self._entries.expire()
        return len(self._entries)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        unique = list(dict.fromkeys(keys))
        # One time for the whole lookup, so no entry expires between `in` and `[]`; expired
        # entries go now, not when the LRU order reaches them.
        with self._entries.timer as now:
            self._entries.expire(now)
            found = {key: self._entries[key] for key in unique if key in self._entries}
        self._hits += len(found)
        self._misses += len(unique) - len(found)
        return found

    async def set_many(self, items: Mapping[str, bytes]) -> None:
        self._entries.update(items)

    def stats(self) -> CacheStats:
        return CacheStats(local_hits=self._hits, misses=self._misses)

    async def close(self) -> None:
        """Nothing to release; entries go with the process."""


def _url_for_logs(url: str) -> str:
    # Redis URLs may carry a password in the user part or the query; logs show neither.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def fail_fast_redis(url: str, timeout_s: float) -> redis.Redis:
    """A client for a Redis that requests use on their way: redis-py's defaults retry 10 times
    with backoff and wait on sockets without a limit, which a down Redis would add to every
    request; one immediate retry still rides out a pooled connection that a Redis restart
    closed."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries=1),
    )


class RedisCache:
    """Entries in a shared Redis under `prefix`, expiring after `ttl_s`; never raises on Redis
    errors: a failed read is all misses, a failed write is dropped."""

    def __init__(
        self,
        url: str,
        ttl_s: float,
        prefix: str = "capserve:",
        timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, not {ttl_s}")
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._url_for_logs = _url_for_logs(url)
        self._client = fail_fast_redis(url, timeout_s)
        self._clock = clock
        self._last_warning_at: float | None = None
        self._failures_since_warning = 0
        self._hits = 0
        self._misses = 0

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        try:
            # The client decodes nothing (no decode_responses): values come back as bytes.
            values = cast(
                list[bytes | None], await self._client.mget([self.prefix + key for key in unique])
            )
        except (RedisError, OSError) as error:
            self._warn("read", error)
            values = [None] * len(unique)
        found = {key: value for key, value in zip(unique, values, strict=True) if value is not None}
        self._hits += len(found)
        self._misses += len(unique) - len(found)
        return found

    async def set_many(self, items: Mapping[str, bytes]) -> None:
        if not items:
            return
        # PX, not EX: ttl_s is a float and EX takes whole seconds only.
        ttl_ms = max(1, round(self.ttl_s * 1000))
        try:
            async with self._client.pipeline(transaction=False) as pipeline:
                for key, value in items.items():
                    pipeline.set(self.prefix + key, value, px=ttl_ms)
                await pipeline.execute()
        except (RedisError, OSError) as error:
            self._warn("write", error)

    def stats(self) -> CacheStats:
        return CacheStats(shared_hits=self._hits, misses=self._misses)

    async def close(self) -> None:
        await self._client.aclose()

    def _warn(self, operation: str, error: Exception) -> None:
        now = self._clock()
        if self._last_warning_at is not None and now - self._last_warning_at < WARNING_INTERVAL_S:
            self._failures_since_warning += 1
            return
        logger.warning(
            "redis cache %s %s failed, going on without it (%d more failure(s) since the last "
            "warning): %s: %s",
            self._url_for_logs,
            operation,
            self._failures_since_warning,
            type(error).__name__,
            error,
        )
        self._last_warning_at = now
        self._failures_since_warning = 0


class LayeredCache:
    """`local` first, then `shared` for what `local` lacks; shared hits are copied into `local`."""

    def __init__(self, local: LocalCache, shared: RedisCache | None) -> None:
        self.local = local
        self.shared = shared
        self._local_hits = 0
        self._shared_hits = 0
        self._misses = 0

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        unique = list(dict.fromkeys(keys))
        found = await self.local.get_many(unique)
        self._local_hits += len(found)
        rest = [key for key in unique if key not in found]
        if self.shared is not None and rest:
            shared = await self.shared.get_many(rest)
            await self.local.set_many(shared)
            self._shared_hits += len(shared)
            found |= shared
        self._misses += len(unique) - len(found)
        return found

    async def set_many(self, items: Mapping[str, bytes]) -> None:
        await self.local.set_many(items)
        if self.shared is not None:
            await self.shared.set_many(items)

    def stats(self) -> CacheStats:
        return CacheStats(
            local_hits=self._local_hits, shared_hits=self._shared_hits, misses=self._misses
        )

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()


class CacheConfig(BaseModel):
    """Whether and how capability outputs are cached; Redis, when set, is shared by replicas."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    max_entries: int = Field(default=100_000, gt=0, description="Per-process LRU capacity.")
    ttl_s: float = Field(default=3600, gt=0, description="Lifetime of an entry in either layer.")
    redis_url: str | None = Field(
        default=None,
        pattern=r"^(redis|rediss|unix)://",
        description="Shared layer, e.g. redis://cache:6379/0; none keeps the cache per process.",
    )

    def build(self) -> ResultCache | None:
        """The configured cache, or None when caching is disabled."""
        if not self.enabled:
            return None
        shared = RedisCache(self.redis_url, self.ttl_s) if self.redis_url is not None else None
        return LayeredCache(LocalCache(self.max_entries, self.ttl_s), shared)
