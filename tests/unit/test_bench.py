"""The benchmark's pure parts (`loadtests/bench.py`): capserve variants, the CPU arithmetic of a
measurement and its table. No Ray, no engine."""

from __future__ import annotations

import os

import pytest

from loadtests.bench import (
    QUICK,
    VARIANTS,
    Measurement,
    Variant,
    cluster_environment,
    comparisons,
    cpu_table,
    environment,
    parse_variants,
)
from loadtests.process_usage import TOTAL


def test_the_named_variants_set_the_serve_modes_and_placements():
    default, haproxy, throughput, both, inline, deployment = parse_variants(
        "default,haproxy,throughput,both,inline,deployment"
    )
    assert default == Variant("default")
    assert haproxy.flags == {"haproxy"} and throughput.flags == {"throughput"}
    assert both.flags == haproxy.flags | throughput.flags
    assert (inline.placement, inline.flags) == ("inline", frozenset())
    assert deployment.placement == "deployment"


def test_variants_join_with_plus():
    (variant,) = parse_variants(" both+inline ")
    assert variant == Variant("both+inline", VARIANTS["both"].flags, "inline")


def test_the_worker_process_variant_gives_vllm_its_cpu_worker_process_back():
    (variant,) = parse_variants("both+worker-process")
    assert variant.flags == VARIANTS["both"].flags
    assert dict(variant.app_env) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("default,fast", "unknown variant 'fast'"),
        ("haproxy,haproxy", "'haproxy' named twice"),
        ("inline+deployment", "more than one placement"),
        (" , ", "no variant named"),
    ],
)
def test_bad_variant_lists_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_variants(spec)


def test_every_mode_is_set_either_way_and_haproxy_gets_its_own_ports():
    env = cluster_environment(VARIANTS["both"])
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != env["RAY_SERVE_HAPROXY_METRICS_PORT"]
    assert cluster_environment(VARIANTS["default"]) == {
        "RAY_SERVE_ENABLE_HA_PROXY": "0",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
    }


def test_environment_is_restored_after(monkeypatch):
    monkeypatch.setenv("BENCH_TEST_SET", "before")
    monkeypatch.delenv("BENCH_TEST_UNSET", raising=False)
    with environment({"BENCH_TEST_SET": "during", "BENCH_TEST_UNSET": "during"}):
        assert os.environ["BENCH_TEST_SET"] == os.environ["BENCH_TEST_UNSET"] == "during"
    assert os.environ["BENCH_TEST_SET"] == "before"
    assert "BENCH_TEST_UNSET" not in os.environ


def test_cpu_per_request_counts_failed_requests_and_per_text_only_answered_texts():
    measurement = Measurement(
        "capserve",
        "64-text requests, 8 clients",
        texts=128,
        seconds=1.0,
        errors=1,
        latencies_s=[0.1, 0.2],
        cpu_ms={"Serve proxy": 30.0, "VLLM::Worker (capserve:engine-minilm)": 90.0},
    )
    assert measurement.cpu_per_request() == {
        "Serve proxy": 10.0,
        "VLLM::Worker (capserve:engine-minilm)": 30.0,
        TOTAL: 40.0,
    }
    assert measurement.cpu_per_text()[TOTAL] == round(120 / 128, 2)
    summary = measurement.summary()
    assert summary["cpu_ms_per_request"][TOTAL] == 40.0


def test_the_raw_engine_has_cpu_per_text_but_no_requests():
    raw = Measurement("raw vLLM (offline)", "embed, one call", 100, 0.5, cpu_ms={"driver": 50.0})
    assert raw.cpu_per_request() == {}
    assert raw.cpu_per_text() == {"driver": 0.5, TOTAL: 0.5}


def test_cpu_table_has_a_row_per_role_costliest_first_and_the_total_last():
    mixed = "mixed capabilities, 1-text requests, 32 clients"
    aware = Measurement("capserve: aware", mixed, 10, 1, latencies_s=[0.1] * 10)
    aware.cpu_ms = {"capserve:Ingress": 10.0, "VLLM::Worker": 50.0}
    naive = Measurement("naive", mixed, 10, 1, latencies_s=[0.1] * 10, cpu_ms={"Ray system": 5.0})

    lines = cpu_table("capserve, variant default", [aware, naive])

    assert lines[2] == f"| process | capserve: {mixed} | naive: {mixed} |"
    assert [line.split(" | ")[0] for line in lines[4:]] == [
        "| VLLM::Worker",
        "| capserve:Ingress",
        "| Ray system",
        f"| {TOTAL}",
    ]
    assert lines[-1] == f"| {TOTAL} | 6.0 / 6.0 | 0.5 / 0.5 |"
    assert lines[4] == "| VLLM::Worker | 5.0 / 5.0 | – / – |"


def test_ratios_compare_each_variant_with_the_shared_contenders():
    peer = Measurement("vllm serve + client kNN", "1-text requests, 32 clients", 100, 1.0)
    ours = {
        variant: Measurement("capserve", "1-text requests, 32 clients", texts, 1.0)
        for variant, texts in (("default", 50), ("haproxy", 80))
    }
    for variant, measurement in ours.items():
        measurement.variant = variant
    results = [peer, *ours.values()]
    name = "capserve / vllm serve (1-text requests, 32 clients)"
    assert comparisons(results, "default")[name] == 0.5
    assert comparisons(results, "haproxy")[name] == 0.8
    assert (
        comparisons(results, "haproxy")[
            "capserve / raw engine (64-text requests vs one offline call)"
        ]
        is None
    )


def test_each_generative_peer_is_compared_with_itself_whatever_the_order():
    workload = "generative (gemma3-270m), 8-text requests, 8 clients"
    tuned = Measurement("vllm serve, worker in engine core", workload, texts=20, seconds=1.0)
    peer = Measurement("vllm serve", workload, texts=10, seconds=1.0)
    ours = Measurement("capserve", workload, texts=30, seconds=1.0)
    ours.variant = "both"
    ratios = comparisons([tuned, peer, ours], "both")
    assert ratios["capserve / vllm serve (generative)"] == 3.0
    assert ratios["capserve / vllm serve, worker in engine core (generative)"] == 1.5


def test_quick_sizes_keep_the_32_client_level_the_ratios_use():
    assert 32 in QUICK.single_clients
