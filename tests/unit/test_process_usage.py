"""Naming the processes of a load test and the CPU time each role spends in a window
(`loadtests/process_usage.py`); no Ray: process trees are given as pid maps, or are a real child."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import psutil
import pytest

from loadtests.process_usage import (
    RAY_SYSTEM,
    TOTAL,
    CpuSample,
    cpu_ms_by_role,
    cpu_snapshot,
    per_unit,
    process_name,
    role,
    roles,
)


@dataclass
class FakeProcess:
    command: list[str]
    executable: str = "fake"

    def cmdline(self) -> list[str]:
        return self.command

    def name(self) -> str:
        return self.executable


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["ray::ServeController.listen_for_change", "", ""], "ray::ServeController"),
        (["ray::ServeReplica:capserve:Ingress", ""], "ray::ServeReplica:capserve:Ingress"),
        (["VLLM::EngineCore"], "VLLM::EngineCore"),
        (
            ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--port", "1"],
            "python -m vllm.entrypoints.openai.api_server",
        ),
        (["/venv/bin/python", "-u", "/ray/_private/log_monitor.py", "--x"], "log_monitor.py"),
        (["/ray/core/src/ray/raylet/raylet", "--socket"], "fake"),
    ],
)
def test_a_process_is_named_by_its_title_script_or_executable(command, expected):
    assert process_name(FakeProcess(command)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ray::ServeReplica:capserve:Ingress", "capserve:Ingress"),
        ("ray::ServeReplica:capserve:capability-alerts", "capserve:capability-alerts"),
        ("ray::ServeReplica:generative:engine-tiny-llama", "generative:engine-tiny-llama"),
        ("ray::ServeReplica:capserve:stats", "capserve:stats"),
        ("ray::ServeReplica:capserve:batch-runner", "capserve:batch-runner"),
        ("ray::ProxyActor", "Serve proxy"),
        ("ray::HAProxyManager", "HAProxy manager"),
        ("haproxy", "HAProxy"),
        ("ray::ServeController", "Serve controller"),
        ("python -m vllm.entrypoints.openai.api_server", "vllm serve API server"),
        ("VLLM::EngineCore", "VLLM::EngineCore"),
        ("raylet", RAY_SYSTEM),
        ("gcs_server", RAY_SYSTEM),
        ("log_monitor.py", RAY_SYSTEM),
        ("ray::DashboardAgent", RAY_SYSTEM),
        ("ray::IDLE", RAY_SYSTEM),
        ("python -c from multiprocessing.resource_tracker im", "multiprocessing resource tracker"),
        ("python -c print(1)", "python -c print(1)"),
    ],
)
def test_role_of_a_process_without_an_owner(name, expected):
    assert role(name, None) == expected


def test_vllm_processes_are_attributed_by_their_own_title_and_the_replica_they_serve():
    names = {
        10: "raylet",
        20: "ray::ServeReplica:capserve:engine-minilm",
        21: "VLLM::EngineCore",
        22: "VLLM::Worker",
        30: "ray::ServeReplica:generative:engine-tiny-llama",
        31: "VLLM::EngineCore",
        40: "python -m vllm.entrypoints.openai.api_server",
        41: "VLLM::EngineCore",
    }
    parents = {10: 1, 20: 10, 21: 20, 22: 21, 30: 10, 31: 30, 40: 1, 41: 40}

    assert roles(names, parents) == {
        10: RAY_SYSTEM,
        20: "capserve:engine-minilm",
        21: "VLLM::EngineCore (capserve:engine-minilm)",
        22: "VLLM::Worker (capserve:engine-minilm)",
        30: "generative:engine-tiny-llama",
        31: "VLLM::EngineCore (generative:engine-tiny-llama)",
        40: "vllm serve API server",
        41: "VLLM::EngineCore",
    }


def test_cpu_by_role_sums_a_role_counts_newcomers_from_zero_and_tells_reused_pids_apart():
    before = {
        (1, 100.0): CpuSample("capserve:Ingress", 2.0),
        (2, 100.0): CpuSample(RAY_SYSTEM, 1.0),
        (3, 100.0): CpuSample(RAY_SYSTEM, 5.0),
        (4, 100.0): CpuSample("exited", 9.0),
        (5, 100.0): CpuSample("reused pid", 7.0),
    }
    after = {
        (1, 100.0): CpuSample("capserve:Ingress", 2.5),
        (2, 100.0): CpuSample(RAY_SYSTEM, 1.25),
        (3, 100.0): CpuSample(RAY_SYSTEM, 5.25),
        (6, 150.0): CpuSample("HAProxy", 0.125),  # started in the window
        (5, 160.0): CpuSample("reused pid", 0.5),  # pid 5 ended and a new process took it
    }

    assert cpu_ms_by_role(before, after) == {
        "capserve:Ingress": 500.0,
        RAY_SYSTEM: 500.0,
        "HAProxy": 125.0,
        "reused pid": 500.0,
    }


def test_per_unit_divides_every_role_and_adds_the_total():
    assert per_unit({"Serve proxy": 300.0, "capserve:Ingress": 100.0}, 200) == {
        "Serve proxy": 1.5,
        "capserve:Ingress": 0.5,
        TOTAL: 2.0,
    }


@pytest.mark.parametrize(("cpu_ms", "units"), [({"Serve proxy": 3.0}, 0), ({}, 10)])
def test_per_unit_is_empty_without_units_or_samples(cpu_ms, units):
    assert per_unit(cpu_ms, units) == {}


def test_a_snapshot_holds_every_descendant_and_this_process_only_when_named():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        key = (child.pid, psutil.Process(child.pid).create_time())
        without_root = cpu_snapshot()
        with_root = cpu_snapshot(root_role="driver")
    finally:
        child.kill()
        child.wait()
    me = psutil.Process()
    assert without_root[key].role == "python -c import time; time.sleep(30)"
    assert (me.pid, me.create_time()) not in without_root
    assert with_root[(me.pid, me.create_time())].role == "driver"
    assert with_root[(me.pid, me.create_time())].cpu_s > 0
