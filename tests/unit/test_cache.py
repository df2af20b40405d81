"""Result cache: LRU and TTL with a fake clock, keys, layering, and Redis, up and down, for real."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from pydantic import ValidationError

from capabilities.cache import (
    CacheConfig,
    CacheStats,
    LayeredCache,
    LocalCache,
    RedisCache,
    cache_key,
)
from cluster.processes import free_port
from tests import redis_server as redis_fixtures
from tests.fakes import FakeClock
from tests.redis_server import redis_server

# The session's redis-server; importing the fixture by name would read as an unused import.
redis_url = redis_fixtures.redis_url


@pytest.fixture()
def prefix() -> str:
    """A key prefix of this test's own, so tests sharing the session's Redis never collide."""
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture()
async def shared(redis_url: str, prefix: str) -> AsyncIterator[RedisCache]:
    cache = RedisCache(redis_url, ttl_s=60, prefix=prefix)
    yield cache
    await cache.close()


async def test_local_cache_returns_only_hits():
    cache = LocalCache(max_entries=10, ttl_s=60)
    await cache.set_many({"a": b"1", "b": b"2"})
    assert await cache.get_many(["a", "b", "c"]) == {"a": b"1", "b": b"2"}
    assert await cache.get_many([]) == {}
    assert cache.stats() == CacheStats(local_hits=2, misses=1)


async def test_local_cache_evicts_the_least_recently_used():
    cache = LocalCache(max_entries=3, ttl_s=60)
    await cache.set_many({"a": b"1", "b": b"2", "c": b"3"})
    await cache.get_many(["a"])  # now b is the least recently used
    await cache.set_many({"d": b"4"})
    assert await cache.get_many(["a", "b", "c", "d"]) == {"a": b"1", "c": b"3", "d": b"4"}
    await cache.set_many({"c": b"33"})  # overwriting uses c too, so a goes next
    await cache.set_many({"e": b"5"})
    assert await cache.get_many(["a", "c", "d", "e"]) == {"c": b"33", "d": b"4", "e": b"5"}
    assert len(cache) == 3


async def test_local_cache_expires_entries_after_ttl_and_drops_them():
    clock = FakeClock()
    cache = LocalCache(max_entries=10, ttl_s=60, clock=clock)
    await cache.set_many({"old": b"1"})
    clock.now += 30
    await cache.set_many({"new": b"2"})
    clock.now += 29.9
    assert await cache.get_many(["old", "new"]) == {"old": b"1", "new": b"2"}
    clock.now += 0.1
    assert await cache.get_many(["old", "new"]) == {"new": b"2"}
    assert len(cache) == 1
    clock.now += 30
    assert await cache.get_many(["new"]) == {}
    assert len(cache) == 0


async def test_a_lookup_sees_one_time_while_the_clock_moves_under_it():
    class Ticking(FakeClock):
        """Moves half a second each time it is read."""

        def __call__(self) -> float:
            self.now += 0.5
            return self.now

    cache = LocalCache(max_entries=10, ttl_s=1.25, clock=Ticking())
    for ttl_reads in range(3):
        await cache.set_many({"k": b"v"})
        # The entry expires between reads of the clock: checking it and reading it must agree.
        for _ in range(ttl_reads):
            await cache.get_many(["k"])
        assert await cache.get_many(["k"]) in ({}, {"k": b"v"})


async def test_setting_again_restarts_the_ttl():
    clock = FakeClock()
    cache = LocalCache(max_entries=10, ttl_s=60, clock=clock)
    await cache.set_many({"a": b"1"})
    clock.now += 50
    await cache.set_many({"a": b"2"})
    clock.now += 50
    assert await cache.get_many(["a"]) == {"a": b"2"}


@pytest.mark.parametrize(("max_entries", "ttl_s"), [(0, 60), (10, 0), (10, -1)])
def test_local_cache_refuses_useless_limits(max_entries, ttl_s):
    with pytest.raises(ValueError):
        LocalCache(max_entries=max_entries, ttl_s=ttl_s)


def test_cache_key_includes_the_version_and_every_other_part():
    key = cache_key("classification", "v1", '{"top_k": 1}', '["hi", {}]')
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == cache_key("classification", "v1", '{"top_k": 1}', '["hi", {}]')
    others = {
        cache_key("classification", "v2", '{"top_k": 1}', '["hi", {}]'),
        cache_key("alerts", "v1", '{"top_k": 1}', '["hi", {}]'),
        cache_key("classification", "v1", '{"top_k": 2}', '["hi", {}]'),
        cache_key("classification", "v1", '{"top_k": 1}', '["ho", {}]'),
    }
    assert len(others) == 4 and key not in others


def test_cache_key_keeps_parts_apart():
    assert cache_key("ab", "c", "", "") != cache_key("a", "bc", "", "")


def test_hit_rate_counts_both_layers():
    assert CacheStats().hit_rate == 0.0
    stats = CacheStats(local_hits=2, shared_hits=1, misses=1)
    assert stats.hit_rate == 0.75
    assert stats.model_dump()["hit_rate"] == 0.75


async def test_redis_cache_round_trips_under_its_prefix(redis_url, prefix, shared):
    await shared.set_many({"a": b"\x00binary\xff", "b": b"2"})
    assert await shared.get_many(["a", "b", "c"]) == {"a": b"\x00binary\xff", "b": b"2"}
    assert await shared.get_many([]) == {}
    await shared.set_many({})
    assert shared.stats() == CacheStats(shared_hits=2, misses=1)
    client = redis.Redis.from_url(redis_url)
    try:
        assert await client.get(prefix + "a") == b"\x00binary\xff"
        assert 0 < await client.pttl(prefix + "a") <= 60_000
    finally:
        await client.aclose()


async def test_redis_cache_prefixes_keep_caches_apart(redis_url, shared):
    other = RedisCache(redis_url, ttl_s=60, prefix=f"other:{uuid.uuid4().hex}:")
    try:
        await shared.set_many({"a": b"1"})
        assert await other.get_many(["a"]) == {}
    finally:
        await other.close()


async def test_redis_cache_entries_expire(redis_url, prefix):
    cache = RedisCache(redis_url, ttl_s=0.2, prefix=prefix)
    try:
        await cache.set_many({"a": b"1"})
        assert await cache.get_many(["a"]) == {"a": b"1"}
        await asyncio.sleep(0.4)
        assert await cache.get_many(["a"]) == {}
    finally:
        await cache.close()


async def test_layered_cache_fills_local_from_shared(redis_url, prefix, shared):
    await shared.set_many({"a": b"1", "b": b"2"})
    local = LocalCache(max_entries=10, ttl_s=60)
    await local.set_many({"c": b"3"})
    cache = LayeredCache(local, RedisCache(redis_url, ttl_s=60, prefix=prefix))
    try:
        assert await cache.get_many(["a", "c", "d"]) == {"a": b"1", "c": b"3"}
        assert await local.get_many(["a", "b"]) == {"a": b"1"}
        assert cache.stats() == CacheStats(local_hits=1, shared_hits=1, misses=1)
        assert await cache.get_many(["a", "b"]) == {"a": b"1", "b": b"2"}
        assert cache.stats() == CacheStats(local_hits=2, shared_hits=2, misses=1)
    finally:
        await cache.close()


async def test_layered_cache_sets_both_layers(redis_url, prefix, shared):
    local = LocalCache(max_entries=10, ttl_s=60)
    cache = LayeredCache(local, RedisCache(redis_url, ttl_s=60, prefix=prefix))
    try:
        await cache.set_many({"a": b"1"})
        assert await local.get_many(["a"]) == {"a": b"1"}
        assert await shared.get_many(["a"]) == {"a": b"1"}
    finally:
        await cache.close()


async def test_layered_cache_without_shared_is_the_local_cache():
    cache = LayeredCache(LocalCache(max_entries=10, ttl_s=60), None)
    await cache.set_many({"a": b"1"})
    assert await cache.get_many(["a", "a", "b"]) == {"a": b"1"}
    assert cache.stats() == CacheStats(local_hits=1, misses=1)


async def test_redis_on_a_closed_port_is_all_misses_and_dropped_writes(caplog):
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60)
    try:
        with caplog.at_level(logging.WARNING, logger="capserve.cache"):
            await cache.set_many({"a": b"1"})
            assert await cache.get_many(["a", "b"]) == {}
        assert cache.stats() == CacheStats(misses=2)
        assert "redis cache redis://127.0.0.1:" in caplog.text
    finally:
        await cache.close()


async def test_redis_stopping_mid_use_turns_into_misses_and_layered_keeps_local(caplog):
    with redis_server() as url:
        shared = RedisCache(url, ttl_s=60)
        cache = LayeredCache(LocalCache(max_entries=10, ttl_s=60), shared)
        await cache.set_many({"a": b"1"})
        assert await shared.get_many(["a"]) == {"a": b"1"}
    try:
        with caplog.at_level(logging.WARNING, logger="capserve.cache"):
            assert await shared.get_many(["a"]) == {}
            await cache.set_many({"b": b"2"})
            assert await cache.get_many(["a", "b", "c"]) == {"a": b"1", "b": b"2"}
        assert "failed, going on without it" in caplog.text
    finally:
        await cache.close()


async def test_redis_failures_warn_at_most_once_per_30_seconds(caplog):
    clock = FakeClock()
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60, clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="capserve.cache"):
            for _ in range(3):
                await cache.get_many(["a"])
                await cache.set_many({"a": b"1"})
                clock.now += 5
            assert len(caplog.records) == 1
            clock.now += 15  # 30 s after the first warning
            await cache.get_many(["a"])
        assert len(caplog.records) == 2
        assert "5 more failure(s) since the last warning" in caplog.records[1].getMessage()
    finally:
        await cache.close()


async def test_warnings_do_not_show_redis_passwords(caplog):
    cache = RedisCache(f"redis://user:hunter2@127.0.0.1:{free_port()}/0?password=hunter2", ttl_s=60)
    try:
        with caplog.at_level(logging.WARNING, logger="capserve.cache"):
            await cache.get_many(["a"])
        assert caplog.records and "hunter2" not in caplog.text
    finally:
        await cache.close()


def test_config_defaults_build_a_local_only_layered_cache():
    cache = CacheConfig().build()
    assert isinstance(cache, LayeredCache)
    assert cache.shared is None
    assert (cache.local.max_entries, cache.local.ttl_s) == (100_000, 3600)


async def test_config_with_redis_builds_a_shared_layer(redis_url):
    cache = CacheConfig(redis_url=redis_url, ttl_s=5, max_entries=7).build()
    assert isinstance(cache, LayeredCache) and isinstance(cache.shared, RedisCache)
    assert (cache.local.max_entries, cache.local.ttl_s, cache.shared.ttl_s) == (7, 5, 5)
    await cache.close()


def test_disabled_config_builds_nothing():
    assert CacheConfig(enabled=False, redis_url="redis://cache:6379/0").build() is None


@pytest.mark.parametrize("url", ["redis://cache:6379/0", "rediss://cache:6380", "unix:///r.sock"])
def test_config_accepts_redis_urls(url):
    assert CacheConfig(redis_url=url).redis_url == url


@pytest.mark.parametrize(
    "fields",
    [
        {"redis_url": "http://cache:6379"},
        {"redis_url": "cache:6379"},
        {"max_entries": 0},
        {"ttl_s": 0},
        {"ttl": 60},
    ],
)
def test_config_refuses_bad_values(fields):
    with pytest.raises(ValidationError):
        CacheConfig(**fields)


def test_config_is_frozen():
    with pytest.raises(ValidationError):
        CacheConfig().enabled = False  # type: ignore[misc]
