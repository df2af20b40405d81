"""GPU readings through NVML: a fake `pynvml` with three GPUs, and this GPU-less machine."""

from dataclasses import dataclass

import pytest

from deployments.telemetry import gpu_health
from deployments.telemetry.gpu_health import GpuReading, read_gpus, visible_gpus

MB = 1024 * 1024


class FakeNVMLError(Exception):
    pass


@dataclass
class FakeGpu:
    index: int
    uuid: str
    used_mb: int
    utilization: int


@dataclass
class Memory:
    used: int
    total: int


@dataclass
class Utilization:
    gpu: int


class FakeNvml:
    """The part of pynvml that gpu_health uses; names answered as bytes, as old pynvml does."""

    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if index >= len(self.gpus):
            raise FakeNVMLError("Invalid Argument")
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        return next(gpu for gpu in self.gpus if gpu.uuid == uuid)

    def nvmlDeviceGetIndex(self, handle: FakeGpu) -> int:
        return handle.index

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> Memory:
        return Memory(used=handle.used_mb * MB, total=81559 * MB)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> Utilization:
        return Utilization(gpu=handle.utilization)


@pytest.fixture
def nvml() -> FakeNvml:
    return FakeNvml([FakeGpu(i, f"GPU-{i}aaa", 1000 * (i + 1), 10 * i) for i in range(3)])


def test_all_gpus_when_cuda_visible_devices_is_unset(nvml: FakeNvml) -> None:
    readings = read_gpus(nvml, None)

    assert [r.index for r in readings] == [0, 1, 2]
    assert readings[1] == GpuReading(
        index=1,
        uuid="GPU-1aaa",
        name="NVIDIA H100 80GB HBM3",
        memory_used_mb=2000.0,
        memory_total_mb=81559.0,
        utilization_pct=10.0,
    )


@pytest.mark.parametrize(
    ("visible", "indexes"),
    [
        ("2", [2]),
        ("2,0", [2, 0]),
        (" 1 , 2 ", [1, 2]),
        ("GPU-1aaa", [1]),
        ("", []),
        ("-1", []),
        ("1,-1,2", [1]),  # CUDA ignores everything from the first invalid entry on
    ],
)
def test_only_the_gpus_cuda_visible_devices_names(
    nvml: FakeNvml, visible: str, indexes: list[int]
) -> None:
    assert [r.index for r in read_gpus(nvml, visible)] == indexes


def test_a_failed_reading_is_an_empty_list_and_one_warning(
    nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gpu_health, "_nvml", lambda: nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # a GPU that fell off the bus

    assert visible_gpus() == []
    assert visible_gpus() == []
    assert [r.message for r in caplog.records].count(
        "reading the GPUs through NVML failed: Invalid Argument"
    ) == 1


def test_visible_gpus_through_the_process_nvml(
    nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu_health, "_nvml", lambda: nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")

    assert [r.uuid for r in visible_gpus()] == ["GPU-0aaa"]


def test_without_a_driver_there_are_no_gpus_and_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if gpu_health._nvml() is not None:
        pytest.skip("this machine has an NVIDIA driver")
    assert visible_gpus() == []
    assert visible_gpus() == []
    assert not [r for r in caplog.records if r.levelname != "DEBUG"]
