"""Serve options of an engine deployment: replicas, resources and the GPU placement group."""

from __future__ import annotations

from typing import Any

from deployments.config import ModelConfig

HEALTH_CHECK_PERIOD_S = 10.0
HEALTH_CHECK_TIMEOUT_S = 30.0


def engine_deployment_options(config: ModelConfig) -> dict[str, Any]:
    """One replica per engine; a sharded engine gets one GPU bundle per shard, packed together.

    The replica actor sits in bundle 0 and takes no GPU itself, so vLLM's Ray executor can place
    one worker per GPU bundle of the replica's placement group.
    """
    deployment = config.deployment
    world_size = config.engine_args.world_size
    options: dict[str, Any] = {
        "name": f"engine-{config.name}",
        "num_replicas": deployment.num_replicas,
        "max_ongoing_requests": deployment.max_ongoing_requests,
        "max_queued_requests": deployment.max_queued_requests,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
        "graceful_shutdown_timeout_s": 20.0,
    }
    if deployment.accelerator == "cpu":
        options["ray_actor_options"] = {"num_cpus": deployment.num_cpus}
    elif world_size == 1:
        options["ray_actor_options"] = {"num_cpus": deployment.num_cpus, "num_gpus": 1}
    else:
        first = {"GPU": 1.0} | ({"CPU": deployment.num_cpus} if deployment.num_cpus else {})
        options["ray_actor_options"] = {"num_cpus": deployment.num_cpus, "num_gpus": 0}
        options["placement_group_bundles"] = [first] + [{"GPU": 1.0}] * (world_size - 1)
        # Pipeline stages may span nodes; tensor shards must share one.
        pipeline = config.engine_args.pipeline_parallel_size > 1
        options["placement_group_strategy"] = "PACK" if pipeline else "STRICT_PACK"
    return options
