"""The application builder named by `serve_config.yaml`.

`import_path: deployments.app:build_app` there.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from capabilities.errors import CapabilityError
from deployments.batch.runner import BatchRunner
from deployments.config import (
    AppConfig,
    BatchConfig,
    CapabilityConfig,
    ConfigError,
    IngressConfig,
    parse_app_config,
)
from deployments.dag.capability_clients import inline_settings
from deployments.dag.runner import CapabilityRunner, runner_name
from deployments.engine.deployment import EngineDeployment
from deployments.engine.placement import engine_deployment_options
from deployments.engine.vllm_engine import check_engine_args
from deployments.http.ingress import Ingress
from deployments.ray_compat import serve_http_host
from deployments.telemetry.stats import StatsRecorder


def check_config(args: dict[str, Any]) -> AppConfig:
    """Validates the config and the files it names.

    Fails with one message that names the fault.
    """
    config = parse_app_config(args)
    for index, model in enumerate(config.models):
        check_engine_args(model, f"models.{index}.engine_args")
    for capability in config.capabilities:
        try:
            capability.capability_class().check_files(capability.parsed_settings())
        except CapabilityError as error:
            raise ConfigError(f"capabilities.{capability.name}.settings: {error}") from None
    return config


# Deployments only the app itself calls: an access-log line per internal call costs CPU that the
# 2-core default cannot spare, and the ingress's access log already records every request.
INTERNAL_LOGGING = {"enable_access_log": False}
# Retry-After of the ingress's own 503s: its queue drains as requests finish, so soon.
INGRESS_RETRY_AFTER_S = 1.0
# Where Serve listens when it is started without http_options.
DEFAULT_HTTP_HOST = "127.0.0.1"


def runner_options(capability: CapabilityConfig) -> dict[str, Any]:
    """Serve options of one capability runner; its settings travel as `user_config`."""
    deployment = capability.deployment
    return {
        "name": runner_name(capability.name),
        "user_config": capability.settings_json(),
        # A batch can only fill when the replica accepts at least a batch's worth of calls.
        "max_ongoing_requests": max(
            deployment.max_ongoing_requests, capability.batching.max_batch_size
        ),
        "max_queued_requests": deployment.max_queued_requests,
        "ray_actor_options": {"num_cpus": deployment.num_cpus},
        "logging_config": INTERNAL_LOGGING,
        **deployment.scaling_options(),
    }


def ingress_options(ingress: IngressConfig) -> dict[str, Any]:
    """Serve options of the HTTP ingress. Requests beyond its queue get Serve's own 503 (a
    text body, as the proxy answers it before the app sees the request) with Retry-After."""
    return {
        **ingress.scaling_options(),
        "max_ongoing_requests": ingress.max_ongoing_requests,
        "max_queued_requests": ingress.max_queued_requests,
        "backpressure_config": {"retry_after_s": INGRESS_RETRY_AFTER_S},
        "ray_actor_options": {"num_cpus": ingress.num_cpus},
    }


def batch_runner_options(batch: BatchConfig) -> dict[str, Any]:
    """Serve options of the batch runner, but for its `user_config` (the inline capabilities'
    settings, as the ingress's)."""
    return {
        "num_replicas": batch.runner_num_replicas,
        "ray_actor_options": {"num_cpus": batch.runner_num_cpus},
        "logging_config": INTERNAL_LOGGING,
    }


def check_exposure(config: AppConfig, http_host: str | None) -> None:
    """Refuses to serve every tenant's data anonymously on a host the network reaches."""
    problem = config.auth.exposure_problem(http_host or DEFAULT_HTTP_HOST)
    if problem is not None:
        raise ConfigError(f"invalid capserve config: {problem}")


def build_app(args: dict[str, Any]) -> Application:
    config = check_config(args)
    check_exposure(config, serve_http_host())
    # `@serve.deployment` makes each class a `Deployment`, which type checkers cannot follow
    # (they keep a decorated class's type, and Ray types the decorator as returning a Callable).
    stats = StatsRecorder.options(logging_config=INTERNAL_LOGGING).bind(  # type: ignore[attr-defined]
        [model.name for model in config.models]
    )
    engines = {
        model.name: EngineDeployment.options(  # type: ignore[attr-defined]
            **engine_deployment_options(model), logging_config=INTERNAL_LOGGING
        ).bind(model, stats)
        for model in config.models
    }
    runners = {
        capability.name: CapabilityRunner.options(  # type: ignore[attr-defined]
            **runner_options(capability)
        ).bind(
            capability.name,
            capability.import_path,
            engines,
            {model.name: model for model in config.models},
            config.cache_dir,
            capability.batching,
            config.cache,
            stats,
        )
        for capability in config.deployed_capabilities
    }
    batch_runner = BatchRunner.options(  # type: ignore[attr-defined]
        **batch_runner_options(config.batch), user_config=inline_settings(config)
    ).bind(config, engines, runners, stats)
    # The ingress and the batch runner run the inline capabilities: their settings are both
    # replicas' user_config, so a live reload names both deployments.
    return Ingress.options(  # type: ignore[attr-defined]
        **ingress_options(config.ingress), user_config=inline_settings(config)
    ).bind(config, engines, runners, stats, batch_runner)
