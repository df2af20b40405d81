"""Serve options of an engine deployment: replicas, resources and the GPU placement group."""

from __future__ import annotations

from typing import Any, Literal

from deployments.config import DeploymentConfig, ModelConfig

HEALTH_CHECK_PERIOD_S = 10.0
HEALTH_CHECK_TIMEOUT_S = 30.0


def engine_deployment_options(config: ModelConfig) -> dict[str, Any]:
    """Replicas of one engine; a sharded engine gets one GPU bundle per shard, packed together."""
    deployment = config.deployment
    options: dict[str, Any] = {
        "name": f"engine-{config.name}",
        **deployment.scaling_options(),
        "max_ongoing_requests": deployment.max_ongoing_requests,
        "max_queued_requests": deployment.max_queued_requests,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        "graceful_shutdown_timeout_s": 20.0,
    }
    if config.engine_args.world_size > 1:
        return options | _placement_group_options(config)
    options["ray_actor_options"] = _actor_options(deployment)
    if deployment.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = deployment.max_replicas_per_node
    return options


def distributed_executor_backend(config: ModelConfig) -> Literal["ray", "uni"]:
    """vLLM's executor: a sharded engine runs one Ray worker per bundle of its replica's
    placement group; an unsharded one runs its model inside vLLM's engine core process, as vLLM
    itself does on one GPU (on a CPU see `vllm_engine.keep_cpu_worker_in_engine_core`)."""
    return "ray" if config.engine_args.world_size > 1 else "uni"


def _actor_options(deployment: DeploymentConfig) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": deployment.num_cpus}
    if deployment.accelerator == "gpu":
        options["num_gpus"] = 1
    if deployment.resources:
        options["resources"] = dict(deployment.resources)
    if deployment.label_selector is not None:
        options["label_selector"] = dict(deployment.label_selector)
    return options


def _placement_group_options(config: ModelConfig) -> dict[str, Any]:
    """The replica actor sits in bundle 0 and takes no GPU itself, so vLLM's Ray executor can
    place one worker per GPU bundle; bundle 0 also holds the replica's CPUs and custom resources."""
    deployment = config.deployment
    cpus = {"CPU": deployment.num_cpus} if deployment.num_cpus else {}
    first = {"GPU": 1.0} | cpus | deployment.resources
    # Pipeline stages may span nodes; tensor shards must share one.
    pipeline = config.engine_args.pipeline_parallel_size > 1
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": deployment.num_cpus, "num_gpus": 0},
        "placement_group_bundles": [first] + [{"GPU": 1.0}] * (config.engine_args.world_size - 1),
        "placement_group_strategy": "PACK" if pipeline else "STRICT_PACK",
    }
    if deployment.label_selector is not None:
        # One selector applies to every bundle.
        options["placement_group_bundle_label_selector"] = [dict(deployment.label_selector)]
    return options
