"""Token buckets per key: local, on a real redis-server, and Redis failing open."""

import uuid

import pytest

from cluster.processes import free_port
from deployments.http.errors import PayloadTooLargeError, RateLimitedError
from deployments.http.rate_limit import (
    Bucket,
    LocalBuckets,
    RateLimitConfig,
    RateLimiter,
    RateLimits,
    RedisBuckets,
    Usage,
)
from tests import redis_server as redis_fixtures
from tests.fakes import FakeClock

redis_url = redis_fixtures.redis_url


async def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock)
    bucket = Bucket(per_s=2, burst=3)
    assert [await buckets.take("k", bucket, 1) for _ in range(3)] == [0, 0, 0]
    assert await buckets.take("k", bucket, 1) == pytest.approx(0.5)
    clock.now += 0.5
    assert await buckets.take("k", bucket, 1) == 0
    clock.now += 100
    assert await buckets.take("k", bucket, 3) == 0
    assert await buckets.take("other", bucket, 3) == 0


def test_a_bucket_holds_one_second_by_default() -> None:
    assert Bucket(per_s=5).capacity == 5
    assert Bucket(per_s=0.1).capacity == 1


async def test_the_limiter_answers_429_with_retry_after() -> None:
    limiter = RateLimiter(RateLimitConfig(), LocalBuckets(FakeClock()))
    limits = RateLimits(requests=Bucket(per_s=0.25, burst=1))
    await limiter.admit("team-a", limits, "requests", 1)
    with pytest.raises(RateLimitedError) as raised:
        await limiter.admit("team-a", limits, "requests", 1)
    assert raised.value.status_code == 429
    assert raised.value.headers() == {"Retry-After": "4"}
    assert "team-a" in raised.value.message
    # Texts are a bucket of their own, unlimited here.
    await limiter.admit("team-a", limits, "texts", 1000)


async def test_more_texts_than_the_burst_is_413_not_429() -> None:
    limiter = RateLimiter(RateLimitConfig(), LocalBuckets(FakeClock()))
    with pytest.raises(PayloadTooLargeError, match="burst of 10"):
        await limiter.admit("a", RateLimits(texts=Bucket(per_s=1, burst=10)), "texts", 11)


async def test_keys_without_limits_get_the_default() -> None:
    default = RateLimits(requests=Bucket(per_s=1, burst=1))
    limiter = RateLimiter(RateLimitConfig(default=default), LocalBuckets(FakeClock()))
    await limiter.admit("a", None, "requests", 1)
    with pytest.raises(RateLimitedError):
        await limiter.admit("a", None, "requests", 1)
    own = RateLimits(requests=Bucket(per_s=100, burst=100))
    await limiter.admit("b", own, "requests", 50)


async def test_replicas_share_buckets_through_redis(redis_url: str) -> None:
    config = RateLimitConfig(redis_url=redis_url)
    replicas = [RedisBuckets(redis_url, LocalBuckets()) for _ in range(2)]
    limiters = [RateLimiter(config, buckets) for buckets in replicas]
    caller = f"team-{uuid.uuid4().hex}"
    limits = RateLimits(texts=Bucket(per_s=0.01, burst=10))
    await limiters[0].admit(caller, limits, "texts", 6)
    await limiters[1].admit(caller, limits, "texts", 4)
    with pytest.raises(RateLimitedError) as raised:
        await limiters[0].admit(caller, limits, "texts", 1)
    assert raised.value.retry_after_s == pytest.approx(100, rel=0.05)
    for buckets in replicas:
        await buckets.close()


async def test_a_down_redis_falls_back_to_local_buckets() -> None:
    buckets = RedisBuckets(f"redis://127.0.0.1:{free_port()}/0", LocalBuckets(), timeout_s=0.2)
    limiter = RateLimiter(RateLimitConfig(), buckets)
    limits = RateLimits(requests=Bucket(per_s=0.01, burst=1))
    await limiter.admit("a", limits, "requests", 1)
    with pytest.raises(RateLimitedError):
        await limiter.admit("a", limits, "requests", 1)
    await buckets.close()


async def test_chat_tokens_are_a_bucket_of_their_own() -> None:
    limiter = RateLimiter(RateLimitConfig(), LocalBuckets(FakeClock()))
    limits = RateLimits(tokens=Bucket(per_s=100, burst=300))
    await limiter.admit_usage("a", limits, Usage(texts=1, tokens=200))
    with pytest.raises(RateLimitedError, match="tokens/s"):
        await limiter.admit_usage("a", limits, Usage(texts=1, tokens=200))
    with pytest.raises(PayloadTooLargeError, match="counts its max_tokens"):
        await limiter.admit_usage("a", limits, Usage(texts=1, tokens=301))


async def test_batch_lines_wait_for_their_keys_tokens_instead_of_failing() -> None:
    clock = FakeClock()

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    limiter = RateLimiter(RateLimitConfig(), LocalBuckets(clock), sleep=sleep)
    limits = RateLimits(requests=Bucket(per_s=2, burst=2), texts=Bucket(per_s=10, burst=10))
    start = clock.now
    for _ in range(6):
        await limiter.wait_for("team-a", limits, Usage(texts=1))
    # Two requests at once, then one every half second.
    assert clock.now - start == pytest.approx(2.0)
    for _ in range(3):
        await limiter.wait_for("team-a", limits, Usage(texts=10))
    # The texts bucket is the narrower one now: 10 texts a second.
    assert clock.now - start == pytest.approx(4.5)
    with pytest.raises(PayloadTooLargeError, match="each classify item, ad-hoc label"):
        await limiter.wait_for("team-a", limits, Usage(texts=11))
