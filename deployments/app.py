"""The application builder named by `serve_config.yaml` (`import_path: deployments.app:build_app`)."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from capabilities.errors import ExamplesError
from capabilities.examples import load_examples
from deployments.config import AppConfig, ConfigError, parse_app_config
from deployments.engine import EngineDeployment
from deployments.ingress import Ingress
from deployments.placement import engine_deployment_options


def check_config(args: dict[str, Any]) -> AppConfig:
    """Validates the config and the files it names, failing with one message that names the fault."""
    config = parse_app_config(args)
    examples = config.classification.examples
    if examples is not None:
        try:
            load_examples(examples)
        except ExamplesError as error:
            raise ConfigError(f"classification.examples: {error}") from None
    return config


def build_app(args: dict[str, Any]) -> Application:
    config = check_config(args)
    engines = {
        model.name: EngineDeployment.options(**engine_deployment_options(model)).bind(model)
        for model in config.models
    }
    ingress = config.ingress
    return Ingress.options(
        num_replicas=ingress.num_replicas,
        max_ongoing_requests=ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": ingress.num_cpus},
    ).bind(config, engines)
