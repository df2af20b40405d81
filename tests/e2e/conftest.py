"""The whole app in a local Ray, deployed from serve_config.yaml the way `serve run` does it.

Ray and both applications start once per test session: the default MiniLM app at `/` and a
generative app on a tiny Llama at `/generative`. Deploying the config (rather than `serve.run` of
a built app) is what lets a test change a runner's `user_config` live, as an operator would.
"""

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.processes import free_port
from cluster.serve_flags import ray_env, selected_flags
from loadtests.apps import default_app, deploy_config, generative_app, tiny_llama_model
from tests.e2e.api_keys import ADMIN_KEY, TEST_API_KEYS, bearer
from tests.http_receiver import HttpReceiver
from tests.redis_server import redis_server

pytestmark = pytest.mark.e2e
# Wide enough that requests sent together meet in one batch on a busy 2-core machine.
TEST_BATCH_WAIT_S = 0.15
DEPLOY_TIMEOUT_S = 600
WEBHOOK_SECRET = "e2e-webhook-secret"
# The replicas find the signing secrets in these variables of the app's runtime_env, as they
# would in a mounted secret's.
WEBHOOK_SECRET_ENV = "CAPSERVE_E2E_WEBHOOK_SECRET"
ALERTS_SECRET_ENV, ALERTS_WEBHOOK_SECRET = "CAPSERVE_E2E_ALERTS_SECRET", "e2e-alerts-secret"
ALERTS_WEBHOOK_TOKEN = "e2e-alerts-t0ken"
# Small chunks and a short lease, so a test sees several checkpoints and a crashed runner's
# batch is taken over within seconds.
TEST_BATCH_SETTINGS = {
    "chunk_size": 100,
    "lease_s": 4,
    "poll_interval_s": 0.5,
    "progress_interval_s": 0.2,
}


class ServeCluster:
    """The deploy config of the running apps; `deploy` applies a changed copy of it."""

    def __init__(self, config: dict[str, Any], base_url: str, metrics_port: int) -> None:
        self.config = config
        self.base_url = base_url
        self.metrics_port = metrics_port
        """The node's Prometheus export (`/metrics`, names prefixed `ray_`)."""

    def deploy(self, config: dict[str, Any]) -> None:
        from deployments.deploy import deploy

        deploy(config)
        self.config = config

    def wait_running(self) -> None:
        """Returns once every app of the config runs and every app it dropped is gone, so that
        the next test meets the config's apps only, and a dropped app's memory is free."""
        from ray import serve

        from deployments.deploy import wait_running

        wait_running(self.config, DEPLOY_TIMEOUT_S)
        names = {app["name"] for app in self.config["applications"]}
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        while dropped := set(serve.status().applications) - names:
            if time.monotonic() > deadline:
                raise TimeoutError(f"apps {sorted(dropped)} still there after {DEPLOY_TIMEOUT_S} s")
            time.sleep(1)


# The generative app's cap on generated tokens, small enough that a test can ask for more.
TEST_MAX_CHAT_TOKENS = 64


def e2e_deploy_config(
    cache_dir: str,
    tiny_llama_path: Path,
    port: int,
    webhook_url: str,
    alerts_url: str,
    redis_url: str,
) -> dict[str, Any]:
    app = default_app(cache_dir)
    app["runtime_env"]["env_vars"] |= {
        WEBHOOK_SECRET_ENV: WEBHOOK_SECRET,
        ALERTS_SECRET_ENV: ALERTS_WEBHOOK_SECRET,
    }
    # Inline capabilities coalesce in the ingress; runners (the generative app's) on their own.
    batching = {"max_batch_size": 64, "batch_wait_timeout_s": TEST_BATCH_WAIT_S}
    app["args"]["ingress"] = {"batching": batching}
    for capability in app["args"]["capabilities"]:
        capability["batching"] = batching
    app["args"]["batch"] = {
        **TEST_BATCH_SETTINGS,
        "dir": f"{cache_dir}/batches-default",
        "result_handlers": [
            {"type": "webhook", "settings": {"url": webhook_url, "secret_env": WEBHOOK_SECRET_ENV}}
        ],
    }
    # An alerts webhook whose URL carries a token, as Slack's and most others' do: /v1/capabilities
    # must not show it.
    alerts = next(c for c in app["args"]["capabilities"] if c["name"] == "alerts")
    alerts["settings"]["sinks"].append(
        {"type": "webhook", "url": alerts_url, "secret_env": ALERTS_SECRET_ENV}
    )
    app["args"]["auth"] = {"api_keys": TEST_API_KEYS}
    # Batch lines take from their key's buckets in the batch runner: the ingress shares them.
    app["args"]["rate_limits"] = {"redis_url": redis_url}
    # These labels share first tokens under the tiny Llama's tokenizer: keys let one decode
    # step score them all (it is no judge of accuracy).
    generative = generative_app(app, tiny_llama_model(tiny_llama_path), cache_dir, answer_keys=True)
    # The default app runs its capabilities inline; this one in a runner deployment, so the
    # suite covers both placements.
    for capability in generative["args"]["capabilities"]:
        capability["placement"] = "deployment"
        capability["batching"] = batching
    generative["args"]["batch"] = {**TEST_BATCH_SETTINGS, "dir": f"{cache_dir}/batches-generative"}
    generative["args"]["limits"] = {"max_chat_tokens": TEST_MAX_CHAT_TOKENS}
    return deploy_config([app, generative], port)


@pytest.fixture(scope="session")
def webhook_receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def alerts_receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def serve_cluster(
    project_root: Path,
    tmp_path_factory,
    tiny_llama_path: Path,
    webhook_receiver: HttpReceiver,
    alerts_receiver: HttpReceiver,
) -> Iterator[ServeCluster]:
    import ray
    from ray import serve

    # Relative paths in serve_config.yaml resolve against the directory Serve starts in.
    os.chdir(project_root)
    port = free_port()
    metrics_port = free_port()
    # Serve's modes (CAPSERVE_SERVE_FLAGS) reach the controller, proxy and replicas only through
    # the environment of the process that starts Ray.
    os.environ.update(ray_env(selected_flags(), free_port))
    with redis_server() as redis_url:
        ray.init(
            include_dashboard=False, namespace="capserve-tests", _metrics_export_port=metrics_port
        )
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        cache_dir = str(tmp_path_factory.mktemp("capserve-cache"))
        cluster = ServeCluster(
            e2e_deploy_config(
                cache_dir,
                tiny_llama_path,
                port,
                webhook_receiver.url,
                f"{alerts_receiver.url}/{ALERTS_WEBHOOK_TOKEN}?token={ALERTS_WEBHOOK_TOKEN}",
                redis_url,
            ),
            f"http://127.0.0.1:{port}",
            metrics_port,
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
    with httpx.Client(base_url=base_url, timeout=60, headers=bearer(ADMIN_KEY)) as http:
        yield http
