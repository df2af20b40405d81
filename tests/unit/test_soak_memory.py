"""The soak's memory verdict per process (`loadtests/soak.py`): what counts as growing, and each
process sampled under its role; no app: series are given, or the process is a real child."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from loadtests.soak import MAX_SLOPE_MB_PER_MIN, MemorySampler, MemorySeries, process_memory

SAMPLE_EVERY_S = 10
THIRTY_MINUTES = [float(at) for at in range(0, 1801, SAMPLE_EVERY_S)]


def series(rss_mb_at: list[float]) -> MemorySeries:
    return MemorySeries(
        pid=7,
        role="capserve:stats",
        name="ray::ServeReplica:capserve:stats",
        samples=list(zip(THIRTY_MINUTES, rss_mb_at, strict=True)),
    )


def test_a_steady_leak_of_six_mb_in_thirty_minutes_is_growing():
    # The stats replica before its latency window was bounded: +6.4 MB over a 30-minute soak.
    leaking = series([150 + 6.4 * at / 1800 for at in THIRTY_MINUTES])

    memory = process_memory(leaking, THIRTY_MINUTES, MAX_SLOPE_MB_PER_MIN)

    assert memory.verdict == "growing"
    assert memory.change_mb == 6.4
    assert memory.second_half_slope_mb_per_min == 0.213
    assert (memory.role, memory.name, memory.lifetime) == (
        "capserve:stats",
        "ray::ServeReplica:capserve:stats",
        "whole soak",
    )


def test_growth_that_settles_in_the_first_half_is_flat():
    # Warm-up: 15 MB over the first five minutes, then level with sampling noise of +-0.5 MB.
    settling = series(
        [
            200 + min(at, 300) / 300 * 15 + (0.5 if index % 2 else -0.5)
            for index, at in enumerate(THIRTY_MINUTES)
        ]
    )

    memory = process_memory(settling, THIRTY_MINUTES, MAX_SLOPE_MB_PER_MIN)

    assert memory.verdict == "flat"
    assert memory.change_mb > 10
    assert abs(memory.second_half_slope_mb_per_min or 0) < 0.01


def test_a_steep_but_small_rise_over_a_short_soak_is_flat():
    # A 2-minute smoke run: +0.7 MB over its last minute is noise, not a leak.
    two_minutes = [float(at) for at in range(0, 121, 5)]
    noisy = MemorySeries(pid=9, role="HAProxy", name="haproxy")
    noisy.samples = [(at, 13.3 + 0.7 * max(0.0, at - 60) / 60) for at in two_minutes]

    memory = process_memory(noisy, two_minutes, MAX_SLOPE_MB_PER_MIN)

    assert memory.second_half_slope_mb_per_min == pytest.approx(0.7, abs=0.01)
    assert memory.verdict == "flat"


def test_a_process_seen_twice_in_the_second_half_has_no_verdict():
    late = MemorySeries(pid=8, role="VLLM::EngineCore", name="VLLM::EngineCore")
    late.samples = [(1790.0, 700.0), (1800.0, 720.0)]

    memory = process_memory(late, THIRTY_MINUTES, MAX_SLOPE_MB_PER_MIN)

    assert (memory.verdict, memory.lifetime, memory.slope_mb_per_min) == (
        "too few samples",
        "appeared",
        None,
    )


def test_the_sampler_names_each_process_by_its_role():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sampler = MemorySampler()
        sampler.sample()
        sampler.sample()
    finally:
        child.kill()
        child.wait()
    [sampled] = [s for s in sampler.series() if s.pid == child.pid]
    assert sampled.role == sampled.name == "python -c import time; time.sleep(30)"
    assert len(sampled.samples) == 2
    assert 0 < sampled.samples[0][1] < psutil.virtual_memory().total / 2**20
