"""Per-key rate limits: token buckets on requests, on texts and on generated tokens.

A bucket holds up to `burst` tokens and refills at `per_s` tokens a second; a request takes one
token from the requests bucket, one per text from the texts bucket and its `max_tokens` from the
tokens bucket (its `Usage`), or is refused with the seconds until enough tokens are back. Batch
lines take from their key's buckets the same way, but wait for the tokens instead of being
refused, so a key's batches run at its rate. With one ingress replica the buckets live in it; with
several they live in Redis, updated by one Lua script that reads Redis's own clock, so replicas
whose clocks differ still share one bucket. When Redis fails the replica falls back to its own
buckets (limits then count per replica) rather than refusing everyone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from capabilities.cache import fail_fast_redis
from deployments.http.errors import PayloadTooLargeError, RateLimitedError

logger = logging.getLogger("capserve")

Counted = Literal["requests", "texts", "tokens"]
COUNTED_AS: dict[Counted, str] = {
    "requests": "",
    "texts": " (each classify item, ad-hoc label and embedding input is one text)",
    "tokens": " (a chat completion counts its max_tokens)",
}


class Bucket(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    per_s: float = Field(gt=0, description="Tokens refilled per second: the sustained rate.")
    burst: float = Field(
        default=0,
        ge=0,
        description="Most tokens held, i.e. the largest burst; 0 means one second's worth "
        "(at least 1).",
    )

    @property
    def capacity(self) -> float:
        return self.burst or max(1.0, self.per_s)


class RateLimits(BaseModel):
    """A key's limits; a bucket left out is not limited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: Bucket | None = Field(default=None, description="Requests, whatever their size.")
    texts: Bucket | None = Field(
        default=None,
        description="Texts: classify items and ad-hoc labels, embedding inputs, chat "
        "completions (1 each).",
    )
    tokens: Bucket | None = Field(
        default=None,
        description="Generated tokens: a chat completion takes its max_tokens "
        "(limits.max_chat_tokens when it sends none) when it is admitted.",
    )

    def bucket(self, counted: Counted) -> Bucket | None:
        buckets: dict[Counted, Bucket | None] = {
            "requests": self.requests,
            "texts": self.texts,
            "tokens": self.tokens,
        }
        return buckets[counted]


class Usage(BaseModel):
    """What one call takes from its key's texts and tokens buckets (besides one request)."""

    model_config = ConfigDict(frozen=True)

    texts: int = Field(default=0, ge=0)
    tokens: int = Field(default=0, ge=0)


class RateLimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: RateLimits | None = Field(
        default=None, description="Limits of every key without its own `rate_limits`."
    )
    redis_url: str | None = Field(
        default=None,
        pattern=r"^(redis|rediss|unix)://",
        description="Where ingress replicas share their buckets; needed with more than one "
        "ingress replica, else each replica counts alone.",
    )


class TokenBuckets(Protocol):
    async def take(self, key: str, bucket: Bucket, tokens: float) -> float:
        """Takes `tokens` from the bucket at `key` and answers 0, or takes nothing and answers
        the seconds until they are there."""
        ...


class LocalBuckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._state: dict[str, tuple[float, float]] = {}

    async def take(self, key: str, bucket: Bucket, tokens: float) -> float:
        now = self._clock()
        held, at = self._state.get(key, (bucket.capacity, now))
        held = min(bucket.capacity, held + (now - at) * bucket.per_s)
        if held >= tokens:
            self._state[key] = (held - tokens, now)
            return 0.0
        self._state[key] = (held, now)
        return (tokens - held) / bucket.per_s


# KEYS[1]: the bucket; ARGV: per_s, capacity, tokens. Answers the wait as a string: Lua numbers
# come back from Redis truncated to integers.
TAKE_SCRIPT = """
local per_s, capacity, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'held', 'at')
local held = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
held = math.min(capacity, held + math.max(0, now - at) * per_s)
local wait = 0
if held >= tokens then held = held - tokens else wait = (tokens - held) / per_s end
redis.call('HSET', KEYS[1], 'held', tostring(held), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / per_s * 1000) + 1000)
return tostring(wait)
"""


class RedisBuckets:
    WARNING_INTERVAL_S = 60.0

    def __init__(self, url: str, fallback: LocalBuckets, timeout_s: float = 0.5) -> None:
        self._client = fail_fast_redis(url, timeout_s)
        self._take = self._client.register_script(TAKE_SCRIPT)
        self._fallback = fallback
        self._last_warning_at = -math.inf

    async def take(self, key: str, bucket: Bucket, tokens: float) -> float:
        try:
            wait = await self._take(
                keys=[f"capserve:rate:{key}"], args=[bucket.per_s, bucket.capacity, tokens]
            )
        except (RedisError, OSError) as error:
            now = time.monotonic()
            if now - self._last_warning_at >= self.WARNING_INTERVAL_S:
                self._last_warning_at = now
                logger.warning(
                    "rate limits: redis failed (%s: %s); counting per replica until it is back",
                    type(error).__name__,
                    error,
                )
            return await self._fallback.take(key, bucket, tokens)
        return float(wait)

    async def close(self) -> None:
        await self._client.aclose()


class RateLimiter:
    """Applies each caller's limits (or the default ones) to what it asks for."""

    def __init__(
        self,
        config: RateLimitConfig,
        buckets: TokenBuckets | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._default = config.default
        if buckets is None:
            local = LocalBuckets()
            buckets = local if config.redis_url is None else RedisBuckets(config.redis_url, local)
        self._buckets = buckets
        self._sleep = sleep

    async def admit(self, caller: str, limits: RateLimits | None, counted: Counted, n: int) -> None:
        """Takes `n` from the caller's `counted` bucket, or raises a 429 saying when to retry
        (413 when `n` is more than the bucket ever holds: waiting would not help)."""
        bucket = self._bucket(caller, limits, counted, n)
        if bucket is None:
            return
        wait_s = await self._buckets.take(f"{caller}:{counted}", bucket, n)
        if wait_s > 0:
            raise RateLimitedError(
                f"rate limit of {caller!r}: {bucket.per_s:g} {counted}/s with bursts of "
                f"{bucket.capacity:g}; retry in {wait_s:.1f} s",
                retry_after_s=wait_s,
            )

    async def admit_usage(self, caller: str, limits: RateLimits | None, usage: Usage) -> None:
        """`admit` of the usage's texts, then of its tokens."""
        await self.admit(caller, limits, "texts", usage.texts)
        await self.admit(caller, limits, "tokens", usage.tokens)

    async def wait_for(self, caller: str, limits: RateLimits | None, usage: Usage) -> None:
        """Takes one request and the usage from the caller's buckets, waiting as long as it
        takes for them to refill (a 413 where a bucket never holds that many)."""
        counts: tuple[tuple[Counted, int], ...] = (
            ("requests", 1),
            ("texts", usage.texts),
            ("tokens", usage.tokens),
        )
        for counted, n in counts:
            bucket = self._bucket(caller, limits, counted, n)
            if bucket is None:
                continue
            while (wait_s := await self._buckets.take(f"{caller}:{counted}", bucket, n)) > 0:
                await self._sleep(wait_s)

    def _bucket(
        self, caller: str, limits: RateLimits | None, counted: Counted, n: int
    ) -> Bucket | None:
        """The bucket `n` is taken from, if any; a 413 where it never holds `n`."""
        bucket = (limits or self._default or RateLimits()).bucket(counted)
        if bucket is None or n <= 0:
            return None
        if n > bucket.capacity:
            raise PayloadTooLargeError(
                f"{n} {counted} in one request exceed this key's {counted} burst of "
                f"{bucket.capacity:g}; send at most that many at once{COUNTED_AS[counted]}"
            )
        return bucket
