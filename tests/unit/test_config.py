import copy
import re
from pathlib import Path

import pytest
import vllm
import yaml

import deployments.app
from capabilities.base import Capability, NoOptions
from deployments.app import check_config, ingress_options, runner_options
from deployments.config import (
    CAPSERVE_ENGINE_ARGS,
    ConfigError,
    EngineArgs,
    IngressConfig,
    ModelConfig,
)
from deployments.engine.placement import engine_deployment_options
from deployments.engine.vllm_engine import (
    VLLM_ENGINE_ARGS,
    capserve_engine_args,
    engine_args_for,
)


@pytest.fixture()
def default_args(project_root: Path, monkeypatch) -> dict:
    monkeypatch.chdir(project_root)
    config = yaml.safe_load((project_root / "serve_config.yaml").read_text())
    return copy.deepcopy(config["applications"][0]["args"])


class CycleA(Capability[NoOptions, NoOptions]):
    name, depends_on, settings_model, output_model = "cycle_a", ("cycle_b",), NoOptions, NoOptions

    async def run(self, texts, context):
        return [NoOptions() for _ in texts]


class CycleB(CycleA):
    name, depends_on = "cycle_b", ("cycle_a",)


def settings_of(args: dict, capability: str) -> dict:
    return next(c for c in args["capabilities"] if c["name"] == capability)["settings"]


def test_the_default_config_is_valid(default_args):
    config = check_config(default_args)
    settings = config.capability("classification").parsed_settings()
    assert settings.strategy == "knn"
    assert Path(config.model("minilm").model, "config.json").is_file()
    assert settings.examples.path.is_absolute()
    assert config.registry().levels == [["classification", "gates"], ["alerts", "recommendations"]]


def test_the_default_app_keeps_the_cpu_engine_memory_flat(project_root: Path):
    """Without these the vLLM CPU worker grew 29 MB/min through the soak; with them it is flat."""
    config = yaml.safe_load((project_root / "serve_config.yaml").read_text())
    env = config["applications"][0]["runtime_env"]["env_vars"]
    assert env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"
    assert int(env["MALLOC_MMAP_THRESHOLD_"]) > 0


def test_a_misspelt_field_is_named(default_args):
    settings_of(default_args, "classification")["stratgy"] = "knn"
    with pytest.raises(
        ConfigError,
        match=r"capabilities\.classification\.settings\.stratgy: Extra inputs are not permitted",
    ):
        check_config(default_args)


def test_a_misspelt_engine_arg_is_named(default_args):
    default_args["models"][0]["engine_args"]["max_model_length"] = 128
    with pytest.raises(ConfigError, match=r"models\.0\.engine_args\.max_model_length"):
        check_config(default_args)


def test_an_unknown_engine_arg_is_named_with_vllms_close_matches(default_args):
    default_args["models"][0]["engine_args"] |= {"quantisation": "awq", "kv_cache_type": "fp8"}
    with pytest.raises(ConfigError) as raised:
        check_config(default_args)
    message = str(raised.value)
    assert (
        f"models.0.engine_args.quantisation: not an engine argument of vLLM {vllm.__version__}; "
        "did you mean 'quantization'" in message
    )
    assert "models.0.engine_args.kv_cache_type: not an engine argument" in message
    assert "'kv_cache_dtype'" in message


def test_any_vllm_engine_arg_reaches_the_engine():
    passed = {
        "quantization": "awq",
        "revision": "v2",
        "tokenizer": "org/tokenizer",
        "kv_cache_dtype": "fp8",
        "compilation_config": {"mode": 0},
    }
    config = ModelConfig(name="m", model="org/m", runner="generate", engine_args=passed)
    args = engine_args_for(config)
    assert (args.quantization, args.revision, args.tokenizer, args.kv_cache_dtype) == (
        "awq",
        "v2",
        "org/tokenizer",
        "fp8",
    )
    assert args.compilation_config.mode == 0
    assert args.max_logprobs == 128  # capserve's own default still applies


def test_a_bad_value_vllm_refuses_is_named_with_the_model():
    config = ModelConfig(
        name="m", model="org/m", runner="generate", engine_args={"compilation_config": {"x": 1}}
    )
    with pytest.raises(ConfigError, match=r"model 'm': engine_args: .*CompilationConfig"):
        engine_args_for(config)


@pytest.mark.parametrize("name", sorted(CAPSERVE_ENGINE_ARGS))
def test_engine_args_capserve_sets_itself_are_refused(name):
    with pytest.raises(
        ValueError, match=re.escape(f"{name} is set by capserve: {CAPSERVE_ENGINE_ARGS[name]}")
    ):
        ModelConfig(name="m", model="org/m", runner="generate", engine_args={name: "x"})


def test_capserves_engine_args_are_vllms():
    """What capserve types, defaults or sets itself names vLLM's arguments (checked on upgrade)."""
    config = ModelConfig(name="m", model="org/m", runner="generate")
    assert set(capserve_engine_args(config)) == set(CAPSERVE_ENGINE_ARGS)
    assert set(CAPSERVE_ENGINE_ARGS) | set(EngineArgs.model_fields) <= VLLM_ENGINE_ARGS


def test_a_missing_model_path_is_named(default_args):
    default_args["models"][0]["model"] = "/nowhere/model"
    with pytest.raises(ConfigError, match=r"models\.0\.model: .*'/nowhere/model' does not exist"):
        check_config(default_args)


def test_a_missing_package_is_named(default_args):
    default_args["models"][0]["model"] = "pkg:no_such_package_here"
    with pytest.raises(ConfigError, match="package 'no_such_package_here' is not installed"):
        check_config(default_args)


def test_an_examples_file_with_no_rows_is_named(default_args, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,category\n")
    settings_of(default_args, "classification")["examples"]["path"] = str(empty)
    with pytest.raises(
        ConfigError,
        match=f"capabilities.classification.settings: examples file {empty} has no rows",
    ):
        check_config(default_args)


def test_an_unknown_label_column_is_named(default_args):
    settings_of(default_args, "classification")["examples"]["label_column"] = "intent"
    with pytest.raises(
        ConfigError, match=r"has no column 'intent'; columns are \['category', 'text'\]"
    ):
        check_config(default_args)


def test_a_missing_examples_file_is_named(default_args):
    settings_of(default_args, "classification")["examples"]["path"] = "data/nope.csv"
    with pytest.raises(ConfigError, match="nope.csv does not exist"):
        check_config(default_args)


def test_an_unknown_embedding_model_is_named(default_args):
    settings_of(default_args, "classification")["embedding_model"] = "bert"
    with pytest.raises(
        ConfigError,
        match="capabilities.classification.settings.embedding_model: no model named 'bert'",
    ):
        check_config(default_args)


def test_a_pooling_model_cannot_serve_generative(default_args):
    settings_of(default_args, "classification")["generative_model"] = "minilm"
    with pytest.raises(ConfigError, match="needs 'generate'"):
        check_config(default_args)


def test_sharding_on_cpu_is_refused():
    with pytest.raises(ValueError, match="needs deployment.accelerator: gpu"):
        ModelConfig(
            name="m", model="org/m", runner="generate", engine_args={"tensor_parallel_size": 2}
        )


def test_prefix_caching_is_on_by_default_for_generate_models_only():
    def engine_kwargs(runner, **engine_args):
        config = ModelConfig(name="m", model="org/m", runner=runner, engine_args=engine_args)
        return config.engine_kwargs()

    assert engine_kwargs("generate")["enable_prefix_caching"] is True
    assert engine_kwargs("generate", enable_prefix_caching=False)["enable_prefix_caching"] is False
    assert "enable_prefix_caching" not in engine_kwargs("pooling")


def test_a_capability_cycle_is_named(default_args):
    default_args["capabilities"] += [
        {"name": "cycle_a", "import_path": "tests.unit.test_config:CycleA"},
        {"name": "cycle_b", "import_path": "tests.unit.test_config:CycleB"},
    ]
    with pytest.raises(
        ConfigError, match="capabilities form a cycle: cycle_a -> cycle_b -> cycle_a"
    ):
        check_config(default_args)


def test_an_unknown_dependency_is_named(default_args):
    default_args["capabilities"] = [
        c for c in default_args["capabilities"] if c["name"] != "classification"
    ]
    default_args["default_capabilities"] = ["gates"]
    with pytest.raises(
        ConfigError, match="'recommendations' depends on 'classification', which is not configured"
    ):
        check_config(default_args)


def test_an_unknown_capability_without_import_path_is_named(default_args):
    default_args["capabilities"].append({"name": "sentiment"})
    with pytest.raises(
        ConfigError, match="capabilities.sentiment: capability 'sentiment' is not built in"
    ):
        check_config(default_args)


def test_a_misspelt_rule_field_names_the_capability(default_args):
    settings_of(default_args, "alerts")["rules_pth"] = "x.yaml"
    with pytest.raises(ConfigError, match=r"capabilities\.alerts\.settings\.rules_pth"):
        check_config(default_args)


def test_a_missing_catalog_stops_start_up(default_args):
    settings_of(default_args, "recommendations")["catalog_path"] = "data/nope.yaml"
    with pytest.raises(ConfigError, match=r"capabilities\.recommendations\.settings: .*nope.yaml"):
        check_config(default_args)


def test_unknown_default_capabilities_are_named(default_args):
    default_args["default_capabilities"] = ["classification", "sentiment"]
    with pytest.raises(ConfigError, match=r"default_capabilities: \['sentiment'\]"):
        check_config(default_args)


def test_runner_options_carry_settings_as_user_config(default_args):
    config = check_config(default_args)
    options = runner_options(config.capability("alerts"))
    assert options["name"] == "capability-alerts"
    assert Path(options["user_config"]["rules_path"]).is_absolute()
    assert options["max_ongoing_requests"] >= config.capability("alerts").batching.max_batch_size
    assert options["num_replicas"] == 1


def test_rate_limits_across_ingress_replicas_need_redis(default_args):
    default_args["ingress"] = {"num_replicas": 2}
    default_args["rate_limits"] = {"default": {"requests": {"per_s": 10}}}
    with pytest.raises(ConfigError, match=r"rate_limits\.redis_url: up to 2 ingress replicas"):
        check_config(default_args)
    default_args["rate_limits"]["redis_url"] = "redis://cache:6379/0"
    assert check_config(default_args).rate_limits.redis_url == "redis://cache:6379/0"


@pytest.mark.parametrize(
    ("keys", "default"),
    [
        ([{"scopes": ["batch"], "rate_limits": {"texts": {"per_s": 10}}}], None),
        ([{"scopes": ["classify", "batch"]}], {"requests": {"per_s": 10}}),
        ([], {"requests": {"per_s": 10}}),
    ],
)
def test_rate_limited_batch_keys_need_redis(default_args, keys, default):
    """Batch lines take from their key's buckets in the batch runner, another process."""
    default_args["auth"] = {
        "api_keys": [{"name": "team", "sha256": "a" * 64, **key} for key in keys]
    }
    default_args["rate_limits"] = {"default": default}
    with pytest.raises(ConfigError, match=r"rate_limits\.redis_url: batch lines count"):
        check_config(default_args)
    default_args["rate_limits"]["redis_url"] = "redis://cache:6379/0"
    check_config(default_args)


def test_limits_of_keys_without_the_batch_scope_need_no_redis(default_args):
    default_args["auth"] = {
        "api_keys": [
            {"name": "team", "sha256": "a" * 64, "scopes": ["classify"]},
            {"name": "jobs", "sha256": "b" * 64, "scopes": ["batch"]},
        ]
    }
    default_args["rate_limits"] = {"default": None}
    default_args["auth"]["api_keys"][0]["rate_limits"] = {"requests": {"per_s": 1}}
    assert check_config(default_args).rate_limits.redis_url is None


def test_api_keys_are_read_from_config(default_args):
    default_args["auth"] = {
        "api_keys": [{"name": "team-a", "sha256": "a" * 64, "scopes": ["classify", "batch"]}]
    }
    assert [key.name for key in check_config(default_args).auth.all_keys()] == ["team-a"]
    default_args["auth"]["api_keys"][0]["scopes"] = ["everything"]
    with pytest.raises(ConfigError, match=r"auth\.api_keys\.0\.scopes\.0"):
        check_config(default_args)


def test_every_deployment_bounds_its_queue(default_args):
    default_args["models"][0]["deployment"]["max_queued_requests"] = 64
    default_args["capabilities"][0]["deployment"] = {"max_queued_requests": 32}
    config = check_config(default_args)
    assert engine_deployment_options(config.model("minilm"))["max_queued_requests"] == 64
    assert runner_options(config.capability("classification"))["max_queued_requests"] == 32
    assert runner_options(config.capability("alerts"))["max_queued_requests"] > 0
    ingress = ingress_options(IngressConfig(max_queued_requests=16))
    assert ingress["max_queued_requests"] == 16
    assert ingress["backpressure_config"]["retry_after_s"] > 0


def test_a_queue_bound_and_call_guard_are_validated(default_args):
    default_args["models"][0]["deployment"]["max_queued_requests"] = 0
    with pytest.raises(ConfigError, match=r"models\.0\.deployment\.max_queued_requests"):
        check_config(default_args)
    default_args["models"][0]["deployment"]["max_queued_requests"] = 8
    default_args["models"][0]["deployment"]["calls"] = {"timeout_s": 30, "cooldown_s": 0}
    with pytest.raises(ConfigError, match=r"models\.0\.deployment\.calls\.cooldown_s"):
        check_config(default_args)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"])
def test_the_app_refuses_to_start_without_keys_on_a_host_the_network_reaches(
    default_args, monkeypatch, host
):
    monkeypatch.setattr(deployments.app, "serve_http_host", lambda: host)
    with pytest.raises(ConfigError, match=f"no API keys, and Serve's http_options.host '{host}'"):
        deployments.app.build_app(default_args)
    default_args["auth"] = {"allow_anonymous": True}
    assert deployments.app.build_app(default_args) is not None


@pytest.mark.parametrize("host", ["127.0.0.1", None])
def test_the_app_starts_without_keys_on_loopback(default_args, monkeypatch, host):
    # None: no Serve runs yet, and `serve.run` will start it on 127.0.0.1.
    monkeypatch.setattr(deployments.app, "serve_http_host", lambda: host)
    assert deployments.app.build_app(default_args) is not None
