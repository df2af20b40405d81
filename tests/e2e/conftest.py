"""The whole app in a local Ray, deployed from serve_config.yaml the way `serve run` does it.

Ray and both applications start once per test session: the default MiniLM app at `/` and a
generative app on a tiny Llama at `/generative`. Deploying the config (rather than `serve.run` of
a built app) is what lets a test change a runner's `user_config` live, as an operator would.
"""

import copy
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.conftest import tiny_llama_config

pytestmark = pytest.mark.e2e
GENERATIVE_LABELS = ["card_arrival", "lost_or_stolen_card", "top_up", "refund_not_showing_up"]
# Wide enough that requests sent together meet in one batch on a busy 2-core machine.
TEST_BATCH_WAIT_S = 0.15
DEPLOY_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeCluster:
    """The deploy config of the running apps; `redeploy` applies a changed copy of it."""

    def __init__(self, config: dict[str, Any], base_url: str) -> None:
        self.config = config
        self.base_url = base_url

    def deploy(self, config: dict[str, Any]) -> None:
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
        self.config = config

    def wait_running(self) -> None:
        from ray import serve

        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        names = [app["name"] for app in self.config["applications"]]
        while time.monotonic() < deadline:
            statuses = serve.status().applications
            states = {name: statuses[name].status if name in statuses else None for name in names}
            failed = [name for name, state in states.items() if state == "DEPLOY_FAILED"]
            if failed:
                raise RuntimeError(f"deploy failed: {statuses[failed[0]].message}")
            if all(state == "RUNNING" for state in states.values()):
                return
            time.sleep(1)
        raise TimeoutError(f"apps not running after {DEPLOY_TIMEOUT_S} s: {states}")


def default_app(project_root: Path) -> dict[str, Any]:
    config = yaml.safe_load((project_root / "serve_config.yaml").read_text())
    return copy.deepcopy(config["applications"][0])


def deploy_config(project_root: Path, cache_dir: str, tiny_llama_path: Path, port: int) -> dict:
    app = default_app(project_root)
    app["args"]["cache_dir"] = cache_dir
    for capability in app["args"]["capabilities"]:
        capability["batching"] = {"max_batch_size": 64, "batch_wait_timeout_s": TEST_BATCH_WAIT_S}
    generative = {
        "name": "generative",
        "route_prefix": "/generative",
        "import_path": app["import_path"],
        "runtime_env": app["runtime_env"],
        "args": {
            "models": [tiny_llama_config(tiny_llama_path).model_dump(mode="json")],
            "capabilities": [
                {
                    "name": "classification",
                    "settings": {
                        "strategy": "generative",
                        "generative_model": "tiny-llama",
                        "labels": GENERATIVE_LABELS,
                        "top_k": 3,
                    },
                }
            ],
            "cache_dir": cache_dir,
        },
    }
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [app, generative],
    }


@pytest.fixture(scope="session")
def serve_cluster(
    project_root: Path, tmp_path_factory, tiny_llama_path: Path
) -> Iterator[ServeCluster]:
    import ray
    from ray import serve

    # Relative paths in serve_config.yaml resolve against the directory Serve starts in.
    os.chdir(project_root)
    port = _free_port()
    ray.init(include_dashboard=False, namespace="capserve-tests")
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    cache_dir = str(tmp_path_factory.mktemp("capserve-cache"))
    cluster = ServeCluster(
        deploy_config(project_root, cache_dir, tiny_llama_path, port), f"http://127.0.0.1:{port}"
    )
    cluster.deploy(cluster.config)
    cluster.wait_running()
    yield cluster
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def base_url(serve_cluster: ServeCluster) -> str:
    return serve_cluster.base_url


@pytest.fixture(scope="session")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        yield http
