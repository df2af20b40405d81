import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import DeploymentSchema

from deployments.app import check_config, ingress_options, runner_options
from deployments.config import ConfigError, IngressConfig, ModelConfig, parse_app_config
from deployments.engine.placement import distributed_executor_backend, engine_deployment_options

AUTOSCALING = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}


@pytest.fixture()
def default_args(project_root: Path, monkeypatch) -> dict:
    monkeypatch.chdir(project_root)
    config = yaml.safe_load((project_root / "serve_config.yaml").read_text())
    return copy.deepcopy(config["applications"][0]["args"])


def gpu_model(tp: int = 1, pp: int = 1, **deployment: Any) -> ModelConfig:
    return ModelConfig(
        name="llm",
        model="meta-llama/Llama-3.1-8B-Instruct",
        runner="generate",
        engine_args={"tensor_parallel_size": tp, "pipeline_parallel_size": pp},
        deployment={"accelerator": "gpu", "num_cpus": 1} | deployment,
    )


def serve_accepts(options: dict[str, Any]) -> None:
    """Serve's own schema of a deployment agrees with the options (it rejects, e.g.,
    max_replicas_per_node beside placement group bundles)."""
    schema_fields = set(DeploymentSchema.model_fields)
    named = {"name": "deployment"} | options
    DeploymentSchema.model_validate({k: v for k, v in named.items() if k in schema_fields})


def test_cpu_engine_takes_no_placement_group(default_args):
    options = engine_deployment_options(check_config(default_args).model("minilm"))
    assert options["name"] == "engine-minilm"
    assert options["num_replicas"] == 1
    assert options["ray_actor_options"] == {"num_cpus": 0}
    assert "placement_group_bundles" not in options
    assert distributed_executor_backend(check_config(default_args).model("minilm")) == "uni"
    serve_accepts(options)


def test_single_gpu_engine_asks_for_one_gpu():
    options = engine_deployment_options(gpu_model(num_replicas=2))
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1}
    assert options["num_replicas"] == 2
    assert "placement_group_bundles" not in options
    assert distributed_executor_backend(gpu_model()) == "uni"
    serve_accepts(options)


def test_tensor_parallel_engine_gets_one_gpu_bundle_per_shard_strictly_packed():
    options = engine_deployment_options(gpu_model(tp=4))
    assert options["placement_group_bundles"] == [{"GPU": 1.0, "CPU": 1}] + [{"GPU": 1.0}] * 3
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0}
    assert distributed_executor_backend(gpu_model(tp=4)) == "ray"
    serve_accepts(options)


def test_pipeline_parallel_engine_may_span_nodes():
    options = engine_deployment_options(gpu_model(tp=8, pp=2, num_cpus=0))
    assert options["placement_group_bundles"] == [{"GPU": 1.0}] * 16
    assert options["placement_group_strategy"] == "PACK"
    assert distributed_executor_backend(gpu_model(tp=8, pp=2)) == "ray"
    serve_accepts(options)


def test_custom_resources_and_labels_go_on_the_replica_actor(default_args):
    default_args["models"][0]["deployment"] |= {
        "resources": {"capserve_engine": 1},
        "max_replicas_per_node": 1,
        "label_selector": {"node-role": "engine"},
    }
    options = engine_deployment_options(check_config(default_args).model("minilm"))
    assert options["ray_actor_options"] == {
        "num_cpus": 0,
        "resources": {"capserve_engine": 1},
        "label_selector": {"node-role": "engine"},
    }
    assert options["max_replicas_per_node"] == 1
    serve_accepts(options)


def test_a_sharded_engine_asks_for_custom_resources_in_its_first_bundle():
    model = gpu_model(
        tp=2, resources={"capserve_engine": 1}, label_selector={"ray.io/accelerator-type": "H100"}
    )
    options = engine_deployment_options(model)
    assert options["placement_group_bundles"] == [
        {"GPU": 1.0, "CPU": 1, "capserve_engine": 1},
        {"GPU": 1.0},
    ]
    assert options["placement_group_bundle_label_selector"] == [{"ray.io/accelerator-type": "H100"}]
    assert "max_replicas_per_node" not in options
    serve_accepts(options)


def test_an_autoscaled_engine_gets_serves_autoscaling_config():
    options = engine_deployment_options(gpu_model(autoscaling_config=AUTOSCALING))
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8.0,
        "upscale_delay_s": 30.0,
        "downscale_delay_s": 600.0,
        "look_back_period_s": 30.0,
        "aggregation_function": "mean",
    }
    serve_accepts(options)


def test_autoscaled_runners_and_ingress_get_serves_autoscaling_config(default_args):
    default_args["capabilities"][0]["deployment"] = {
        "autoscaling_config": AUTOSCALING | {"initial_replicas": 2, "upscale_delay_s": 5}
    }
    config = check_config(default_args)
    options = runner_options(config.capability("classification"))
    assert "num_replicas" not in options
    assert options["autoscaling_config"]["initial_replicas"] == 2
    assert options["autoscaling_config"]["upscale_delay_s"] == 5
    assert runner_options(config.capability("alerts"))["num_replicas"] == 1
    ingress = ingress_options(IngressConfig(autoscaling_config={"max_replicas": 3}))
    assert ingress["autoscaling_config"]["max_replicas"] == 3
    for serve_options in (options, ingress):
        serve_accepts(serve_options)


def test_autoscaled_ingress_replicas_need_shared_rate_limits(default_args):
    default_args["ingress"] = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}
    default_args["rate_limits"] = {"default": {"requests": {"per_s": 10}}}
    with pytest.raises(ConfigError, match=r"rate_limits\.redis_url: up to 3 ingress replicas"):
        parse_app_config(default_args)


@pytest.mark.parametrize(
    ("deployment", "problem"),
    [
        (
            {"num_replicas": 2, "autoscaling_config": AUTOSCALING},
            r"models\.0\.deployment: num_replicas and autoscaling_config exclude each other",
        ),
        (
            {"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}},
            r"deployment\.autoscaling_config: max_replicas \(2\) must be at least min_replicas",
        ),
        (
            {"autoscaling_config": AUTOSCALING | {"initial_replicas": 5}},
            r"autoscaling_config: initial_replicas \(5\) must lie between",
        ),
        (
            {"autoscaling_config": {"max_replicas": 2, "target_ongoing_request": 4}},
            r"autoscaling_config\.target_ongoing_request: Extra inputs are not permitted",
        ),
        ({"autoscaling_config": {"max_replicas": 0}}, r"autoscaling_config\.max_replicas"),
        ({"resources": {"GPU": 1}}, r"models\.0\.deployment\.resources: \['GPU'\] come from"),
        ({"resources": {"capserve_engine": 0}}, r"deployment\.resources: amounts must be positive"),
        ({"max_replicas_per_node": 0}, r"models\.0\.deployment\.max_replicas_per_node"),
        ({"label_selector": {"bad key": "x"}}, r"deployment\.label_selector: Invalid label key"),
    ],
)
def test_bad_scaling_and_placement_are_named(default_args, deployment, problem):
    default_args["models"][0]["deployment"] = deployment
    with pytest.raises(ConfigError, match=problem):
        parse_app_config(default_args)


def test_a_sharded_engine_cannot_cap_replicas_per_node(default_args):
    default_args["models"][0] |= {
        "engine_args": {"tensor_parallel_size": 2},
        "deployment": {"accelerator": "gpu", "max_replicas_per_node": 1},
    }
    with pytest.raises(
        ConfigError, match=r"models\.0: deployment\.max_replicas_per_node: a sharded engine"
    ):
        parse_app_config(default_args)
