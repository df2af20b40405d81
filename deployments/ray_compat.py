"""Every private Ray API capserve calls, in one place. Ray is pinned to `PINNED_RAY_VERSION`
(pyproject.toml); on an upgrade, check each function here against the new Ray."""

from __future__ import annotations

import copy
from typing import Any

from ray.serve.handle import DeploymentResponse, DeploymentResponseGenerator

PINNED_RAY_VERSION = "2.60.0"


def label_selector_problem(selector: dict[str, str] | None) -> str | None:
    """Ray's own check of a label selector, so one Ray would refuse at deploy time fails at config
    parse instead; None when it is valid."""
    from ray._private.label_utils import validate_label_selector

    return validate_label_selector(selector)


def serve_controller_client() -> Any:
    """The Serve controller's client of this driver (deploy a config, read Serve's details):
    what `serve deploy` uses, with no public Python equivalent in Ray 2.60."""
    from ray.serve.context import _get_global_client

    return _get_global_client()


def serve_http_host() -> str | None:
    """The host Serve's HTTP ingress (its proxy or HAProxy) binds, from the running controller;
    None before Serve runs in this Ray, when it will start on its default, 127.0.0.1."""
    import ray
    from ray.serve.context import _get_global_client

    if not ray.is_initialized():
        return None
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    # Serve, and HAProxy, bind every interface for a host left unset.
    return client.http_config.host or "0.0.0.0"


async def accepted(response: DeploymentResponse[Any] | DeploymentResponseGenerator[Any]) -> None:
    """Returns once a replica has taken the call. Serve 2.60 has no public way to wait for this;
    its router holds a call for a deployment without running replicas until one starts."""
    await response._fetch_future_result_async()


def serve_namespace() -> str:
    """The Ray namespace `serve run` starts Ray in (cluster/serve_run.py starts it alike)."""
    from ray.serve._private.constants import SERVE_NAMESPACE

    return SERVE_NAMESPACE


def session_dir() -> str:
    """The running Ray node's session folder (logs, the metrics service discovery file)."""
    import ray

    # Ray declares `_global_node = None` unannotated, so type checkers take it to be always None.
    return ray._private.worker._global_node.get_session_dir_path()  # type: ignore[attr-defined]


def check_cluster_launcher_config(config: dict[str, Any]) -> None:
    """What `ray up` does with a cluster launcher config before it reaches the cloud: fill in the
    provider's defaults and validate the result; raises where `ray up` would refuse it."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))
