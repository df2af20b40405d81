"""The whole app through `serve.run` in a local Ray, started once per test session."""

import copy
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.conftest import tiny_llama_config

pytestmark = pytest.mark.e2e
GENERATIVE_LABELS = ["card_arrival", "lost_or_stolen_card", "top_up", "refund_not_showing_up"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def default_app_args(project_root: Path) -> dict:
    config = yaml.safe_load((project_root / "serve_config.yaml").read_text())
    return copy.deepcopy(config["applications"][0]["args"])


@pytest.fixture(scope="session")
def base_url(project_root: Path, tmp_path_factory, tiny_llama_path: Path) -> Iterator[str]:
    import ray
    from ray import serve

    from deployments.app import build_app

    port = _free_port()
    ray.init(
        include_dashboard=False,
        namespace="capserve-tests",
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = default_app_args(project_root)
    args["cache_dir"] = str(tmp_path_factory.mktemp("capserve-cache"))
    serve.run(build_app(args), name="capserve", route_prefix="/")
    generative = {
        "models": [tiny_llama_config(tiny_llama_path).model_dump(mode="json")],
        "classification": {
            "strategy": "generative",
            "generative_model": "tiny-llama",
            "labels": GENERATIVE_LABELS,
            "top_k": 3,
        },
        "cache_dir": args["cache_dir"],
    }
    serve.run(build_app(generative), name="generative", route_prefix="/generative")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        yield http
