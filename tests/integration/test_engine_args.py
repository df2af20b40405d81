"""vLLM engine arguments capserve does not type itself reach the real engine as given."""

import pytest

from deployments.config import ModelConfig
from loadtests.apps import tiny_llama_model
from tests.integration.conftest import started

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer_path(tiny_llama_path, tmp_path_factory):
    """The tiny Llama's tokenizer in a folder of its own, as a separately published one is."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(tiny_llama_path).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(tiny_llama_path, tokenizer_path):
    base = tiny_llama_model(tiny_llama_path)
    engine_args = base.engine_args.model_dump(exclude={"gpu_memory_utilization"}) | {
        "tokenizer": str(tokenizer_path),
        "kv_cache_dtype": "bfloat16",
        "kv_cache_memory_bytes": 64 * 2**20,
    }
    yield from started(ModelConfig.model_validate(base.model_dump() | {"engine_args": engine_args}))


async def test_tokenizer_and_kv_cache_dtype_reach_the_engine(engine, tokenizer_path):
    assert engine._llm.model_config.tokenizer == str(tokenizer_path)
    assert engine._llm.vllm_config.cache_config.cache_dtype == "bfloat16"
    [result] = await engine.choose(["Text: my card\nLabel:"], ["card_arrival", "top_up"])
    assert result.choice in ("card_arrival", "top_up")
