"""An engine's identity, which the example-embedding and result caches key on: new weights,
dtype or length under the same model name make a new identity; sizing the engine does not."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from capabilities.base import Resources
from capabilities.batching import RunCall, run_batch
from capabilities.cache import CacheConfig
from capabilities.classification import ClassificationCapability, ClassificationSettings
from deployments.config import ModelConfig
from tests.fakes import FakeEngine


def weights(folder: Path, tokenizer: str = '{"vocab": 1}', size: int = 4096) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tokenizer)
    (folder / "model.safetensors").write_bytes(b"\0" * size)
    return folder


def identity(folder: Path, **engine_args: Any) -> str:
    model = ModelConfig(name="minilm", model=str(folder), runner="pooling", engine_args=engine_args)
    return model.identity


def test_the_same_weights_and_arguments_are_the_same_identity(tmp_path):
    folder = weights(tmp_path / "minilm")
    assert identity(folder) == identity(folder)
    assert identity(folder).startswith("minilm@")
    # Where the same files lie under another absolute path (another node's copy) nothing says
    # they differ but the path, which is part of the identity.
    assert identity(weights(tmp_path / "copy")) != identity(folder)


@pytest.mark.parametrize(
    "change",
    [
        lambda folder: (folder / "tokenizer.json").write_text('{"vocab": 2}'),
        lambda folder: (folder / "model.safetensors").write_bytes(b"\0" * 8192),
        lambda folder: (folder / "config.json").write_text("{}"),
    ],
    ids=["tokenizer content", "weights size", "a file added"],
)
def test_weights_changed_in_place_are_a_new_identity(tmp_path, change):
    folder = weights(tmp_path / "minilm")
    before = identity(folder)
    change(folder)
    assert identity(folder) != before


def test_a_name_pointed_at_other_weights_is_a_new_identity(tmp_path):
    current = tmp_path / "current"
    current.symlink_to(weights(tmp_path / "v1"))
    before = identity(current)
    current.unlink()
    current.symlink_to(weights(tmp_path / "v2", tokenizer='{"vocab": 3}'))
    assert identity(current) != before


@pytest.mark.parametrize("engine_args", [{"dtype": "float32"}, {"max_model_len": 128}, {"seed": 1}])
def test_arguments_that_change_outputs_are_a_new_identity(tmp_path, engine_args):
    folder = weights(tmp_path / "minilm")
    assert identity(folder, **engine_args) != identity(folder)


@pytest.mark.parametrize(
    "engine_args",
    [{"gpu_memory_utilization": 0.5}, {"max_num_seqs": 8}, {"max_num_batched_tokens": 4096}],
)
def test_sizing_the_engine_keeps_the_identity(tmp_path, engine_args):
    folder = weights(tmp_path / "minilm")
    assert identity(folder, **engine_args) == identity(folder)


def test_the_identity_travels_with_the_config_to_the_replicas(tmp_path):
    model = ModelConfig(name="minilm", model=str(weights(tmp_path / "m")), runner="pooling")
    assert pickle.loads(pickle.dumps(model)).identity == model.identity
    assert "identity" not in model.model_dump()


async def test_results_computed_with_the_old_weights_are_not_served_after_a_swap():
    settings = ClassificationSettings(
        strategy="zero_shot", embedding_model="minilm", labels=["refund", "greeting"]
    )
    cache = CacheConfig(max_entries=100).build()

    async def classify_with(engine: FakeEngine) -> int:
        capability = ClassificationCapability(settings, Resources(engines={"minilm": engine}))
        await capability.load()
        _, report = await run_batch(capability, [RunCall(texts=["hello there"])], cache)
        return report.cache_hits

    assert await classify_with(FakeEngine("minilm", identity="minilm@old")) == 0
    assert await classify_with(FakeEngine("minilm", identity="minilm@old")) == 1
    assert await classify_with(FakeEngine("minilm", identity="minilm@new")) == 0
