"""What an engine's outputs depend on, as one short string: the caches of example embeddings and
of capability results key on it, never on the model's name in the config, so new weights under
an old name never meet vectors or answers the old weights computed.

It is worked out where the config is validated (the app builder), from the resolved model folder
(its files' names and sizes, the content of the small ones: configs and tokenizers) or the
Hugging Face id, the runner, and every engine argument that can change an output (dtype,
max_model_len, a revision, quantization...). Arguments that only size or schedule the engine
are left out, so tuning them keeps the caches. No Ray, no vLLM.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Sizes and scheduling only: the same model computes the same outputs under any of these.
CAPACITY_ARGS = frozenset(
    {
        "gpu_memory_utilization",
        "kv_cache_memory_bytes",
        "max_num_seqs",
        "max_num_batched_tokens",
        "enable_prefix_caching",
        "tensor_parallel_size",
        "pipeline_parallel_size",
    }
)
# Files up to this size are hashed (configs, tokenizers); larger ones (weights) count by size, so
# working out the identity never reads gigabytes.
HASHED_FILE_BYTES = 1 << 20


def folder_fingerprint(folder: Path) -> list[tuple[str, int, str | None]]:
    """(relative path, size, sha256 of a small file) of every file under `folder`, hidden
    folders such as `.git` left out."""
    entries = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        size = path.stat().st_size
        digest = (
            hashlib.sha256(path.read_bytes()).hexdigest() if size <= HASHED_FILE_BYTES else None
        )
        entries.append((relative.as_posix(), size, digest))
    return entries


def model_identity(name: str, model: str, runner: str, engine_kwargs: Mapping[str, Any]) -> str:
    """`<name>@<digest>`: the name for people reading a cache folder, the digest for the rest."""
    folder = Path(model)
    material = {
        "model": model,
        "files": folder_fingerprint(folder) if folder.is_dir() else None,
        "runner": runner,
        "engine_args": {k: v for k, v in engine_kwargs.items() if k not in CAPACITY_ARGS},
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode())
    return f"{name}@{digest.hexdigest()[:16]}"
