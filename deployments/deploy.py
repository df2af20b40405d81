"""Deploying a Serve config from Python, the way `serve run` / `serve deploy` do.

Used where a program (the benchmark, the end-to-end tests) starts apps itself: deploying the
config, rather than `serve.run` of a built app, keeps the operator's path, including lightweight
`user_config` updates that reload capability settings without restarting engines.
"""

from __future__ import annotations

import time
from typing import Any

from ray import serve
from ray.serve.schema import ServeDeploySchema

from deployments.ray_compat import serve_controller_client


def deploy(config: dict[str, Any]) -> None:
    """Applies a full Serve deploy config (`serve_config.yaml`'s shape) to the running Serve."""
    serve_controller_client().deploy_apps(ServeDeploySchema.model_validate(config))


def wait_running(config: dict[str, Any], timeout_s: float = 600) -> None:
    """Returns once every app of `config` is RUNNING; raises with Serve's message if one failed."""
    deadline = time.monotonic() + timeout_s
    names = [app["name"] for app in config["applications"]]
    states: dict[str, Any] = {}
    while time.monotonic() < deadline:
        statuses = serve.status().applications
        states = {name: statuses[name].status if name in statuses else None for name in names}
        failed = [name for name, state in states.items() if state == "DEPLOY_FAILED"]
        if failed:
            raise RuntimeError(f"app {failed[0]!r} failed to deploy: {statuses[failed[0]].message}")
        if all(state == "RUNNING" for state in states.values()):
            return
        time.sleep(1)
    raise TimeoutError(f"apps not running after {timeout_s:.0f} s: {states}")
