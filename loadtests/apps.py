"""Serve deploy configs the benchmark and the end-to-end tests start: the default app from
`serve_config.yaml` and generative apps (a tiny Llama, Gemma 3 270M), side by side on one
port."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from cluster.processes import free_port
from deployments.config import ModelConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GENERATIVE_LABELS = ["card_arrival", "lost_or_stolen_card", "top_up", "refund_not_showing_up"]


def tiny_llama_model(path: Path) -> ModelConfig:
    return ModelConfig(
        name="tiny-llama",
        model=str(path),
        runner="generate",
        engine_args={
            "dtype": "float32",
            "max_model_len": 1024,
            "gpu_memory_utilization": 0.15,
            "enable_prefix_caching": True,
        },
        max_tokens=64,
    )


def tiny_bert_model(path: Path) -> ModelConfig:
    """The sequence classifier tests/tiny_bert.py builds, for the `classifier` strategy."""
    return ModelConfig(
        name="tiny-bert",
        model=str(path),
        runner="pooling",
        engine_args={"dtype": "float32", "max_model_len": 128, "gpu_memory_utilization": 0.05},
    )


# Gemma's turn format (its instruction-tuned checkpoints' template, text only): no system turn, a
# system message opens the first user turn; the model speaks as `model`. The GGUF-built base
# checkpoint carries no template, and chat prompts are tokenised without special tokens, so
# the template writes <bos> itself.
GEMMA_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
  {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set first_user_prefix = '' -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
  {%- endif -%}
  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
  {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
  {{- message['content'] | trim }}
  {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{ '<start_of_turn>model\n' }}
{%- endif -%}
"""


def gemma_model(path: Path) -> ModelConfig:
    """Gemma 3 270M (tests/gemma.py) within ~2.5 GiB: its 262k-token vocabulary makes vLLM's
    share-of-memory sizing ask for ~11 GiB on a CPU, so the KV cache is sized directly."""
    return ModelConfig(
        name="gemma3-270m",
        model=str(path),
        runner="generate",
        engine_args={
            # Cast from the float32 checkpoint: 2.4 instead of 3.7 GiB and faster, on AVX512-BF16.
            "dtype": "bfloat16",
            # Room for few-shot prompts over Banking77's 77 labels.
            "max_model_len": 8192,
            # ~13k tokens: one such prompt's shared prefix plus 16 texts.
            "kv_cache_memory_bytes": 256 * 2**20,
            "max_num_seqs": 16,
            "max_num_batched_tokens": 1024,
            # One step scores up to this many labels; Banking77 has 77.
            "max_logprobs": 128,
            # torch.compile adds 2 minutes to the load for ~10% faster steps.
            "enforce_eager": True,
        },
        max_tokens=64,
        chat_template=GEMMA_CHAT_TEMPLATE,
    )


def _default_app_template() -> dict[str, Any]:
    return yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())["applications"][0]


def use_app_environment() -> None:
    """Sets the default app's `runtime_env` variables in this process where unset, so that what
    a script runs outside Serve (the raw engine, `vllm serve`) runs with the settings the replicas
    get."""
    for name, value in _default_app_template()["runtime_env"]["env_vars"].items():
        os.environ.setdefault(name, str(value))


def default_app(cache_dir: str) -> dict[str, Any]:
    app = copy.deepcopy(_default_app_template())
    app["args"]["cache_dir"] = cache_dir
    return app


def set_batching(app: dict[str, Any], max_batch_size: int, batch_wait_timeout_s: float) -> None:
    """Sets `@serve.batch` of the ingress, every capability runner and every engine of `app`."""
    batching = {"max_batch_size": max_batch_size, "batch_wait_timeout_s": batch_wait_timeout_s}
    for part in app["args"]["capabilities"] + app["args"]["models"]:
        part["batching"] = dict(batching)
    app["args"].setdefault("ingress", {})["batching"] = dict(batching)


def set_placement(app: dict[str, Any], placement: str) -> None:
    """Sets `placement` of every capability of `app` (`inline` or `deployment`)."""
    for capability in app["args"]["capabilities"]:
        capability["placement"] = placement


def classifying_app(
    template: dict[str, Any],
    name: str,
    model: ModelConfig,
    classification: dict[str, Any],
    cache_dir: str,
) -> dict[str, Any]:
    """An app beside the default one (`template`), at `/<name>`: one engine on `model` and the
    classification capability with `classification` settings."""
    return {
        "name": name,
        "route_prefix": f"/{name}",
        "import_path": template["import_path"],
        "runtime_env": template["runtime_env"],
        "args": {
            "models": [model.model_dump(mode="json")],
            "capabilities": [{"name": "classification", "settings": classification}],
            "cache_dir": cache_dir,
        },
    }


def generative_app(
    template: dict[str, Any], model: ModelConfig, cache_dir: str, answer_keys: bool = False
) -> dict[str, Any]:
    """The app at `/generative` classifying GENERATIVE_LABELS with `model`'s generative
    strategy. `answer_keys` where the labels' first tokens collide under the model's tokenizer,
    so that one decode step still scores them all."""
    settings = {
        "strategy": "generative",
        "generative_model": model.name,
        "labels": GENERATIVE_LABELS,
        "top_k": 3,
        "answer_keys": answer_keys,
    }
    return classifying_app(template, "generative", model, settings, cache_dir)


def deploy_config(applications: list[dict[str, Any]], port: int) -> dict[str, Any]:
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": applications,
    }


@contextmanager
def uncached_default_app(
    namespace: str, cache_dir: str, model_settings: Mapping[str, Mapping[str, Any]] | None = None
) -> Iterator[str]:
    """The default app in this process's own Ray with the result cache off, so every request is
    real work; `model_settings` (e.g. `{"engine_args": {...}}`) are set on top of every model's
    own. Yields its base URL and shuts Ray down after."""
    app = default_app(cache_dir)
    app["args"]["cache"] = {"enabled": False}
    for model in app["args"]["models"]:
        for section, settings in (model_settings or {}).items():
            model[section] = {**model.get(section, {}), **settings}
    with running_app(namespace, app) as base_url:
        yield base_url


@contextmanager
def serve_cluster(namespace: str, port: int, **ray_options: Any) -> Iterator[None]:
    """A fresh Ray in this process, started with `ray_options` on top of no dashboard and no
    worker logs, with Serve on `port`; Serve and Ray are shut down after."""
    import ray
    from ray import serve

    os.chdir(PROJECT_ROOT)
    ray.init(
        namespace=namespace, **{"include_dashboard": False, "log_to_driver": False} | ray_options
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@contextmanager
def running_app(namespace: str, app: dict[str, Any], **ray_options: Any) -> Iterator[str]:
    """`app` in this process's own Ray (`serve_cluster`); yields its base URL."""
    from deployments.deploy import deploy, wait_running

    port = free_port()
    with serve_cluster(namespace, port, **ray_options):
        config = deploy_config([app], port)
        deploy(config)
        wait_running(config)
        yield f"http://127.0.0.1:{port}"
