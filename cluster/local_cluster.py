"""A real multi-node Ray cluster on one machine, and capserve deployed on it.

The head and every worker node are started with `ray start`, each on loopback ports of its own and
with its own resources and labels, exactly as on separate machines; the app is deployed with
`serve run`. Engine replicas need the `capserve_engine` resource, which only worker nodes have, so
they land on workers (one per node), while the proxy, ingress and capability runners stay on the
head. A worker node can be pinned to CPU cores (every process it starts, vLLM's included, inherits
the affinity) and killed with everything it runs, like a machine that fails.

    python -m cluster.local_cluster --workers 2 --engine-replicas 2

starts it, prints the URL and serves until Ctrl-C, then removes every process it started.
The multi-node test (tests/cluster) and the scale-out benchmark (loadtests/scaleout.py) use it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import psutil
import yaml

from cluster.processes import free_port
from cluster.serve_flags import ray_env, selected_flags
from deployments.batch.runner import BatchRunner
from deployments.config import CapabilityConfig
from deployments.dag.runner import runner_name
from deployments.http.ingress import Ingress
from deployments.telemetry.stats import StatsRecorder

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENGINE_RESOURCE = "capserve_engine"
HEAD_RESOURCE = "capserve_head"
NODE_LABEL = "capserve.io/node"
# Per node: object store, which capserve barely uses (results travel as small replies).
OBJECT_STORE_BYTES = 256 * 1024**2
NODE_START_TIMEOUT_S = 60.0
APP_READY_TIMEOUT_S = 600.0
# Marks a helper driver's answer: Ray's drivers also print the cluster's warnings to stdout
# ("raylet has lagging heartbeats ..."), sometimes after the answer.
DRIVER_ANSWER = "capserve-driver-answer:"


class ClusterError(RuntimeError):
    """The cluster or the app on it did not come up; the message says which part and why."""


def driver_answer(stdout: str) -> Any:
    """The JSON value a helper driver printed after DRIVER_ANSWER; None if it printed none."""
    answers = [
        line.removeprefix(DRIVER_ANSWER)
        for line in stdout.splitlines()
        if line.startswith(DRIVER_ANSWER)
    ]
    return json.loads(answers[-1]) if answers else None


@dataclass(frozen=True)
class NodeSpec:
    """One `ray start` of the cluster."""

    name: str
    head: bool = False
    num_cpus: int = 1
    resources: dict[str, float] = field(default_factory=dict)
    cores: tuple[int, ...] | None = None
    """CPU cores every process of the node is confined to; None leaves them free."""


def worker_specs(count: int, pin_cores: bool) -> list[NodeSpec]:
    """Worker nodes that each take one engine replica; pinned, worker i gets core i."""
    cores = os.sched_getaffinity(0)
    if pin_cores and count > len(cores):
        raise ClusterError(f"cannot pin {count} workers to one core each: {len(cores)} cores")
    return [
        NodeSpec(
            name=f"worker-{index + 1}",
            resources={ENGINE_RESOURCE: 1},
            cores=(sorted(cores)[index],) if pin_cores else None,
        )
        for index in range(count)
    ]


def _free_ports(count: int, taken: set[int]) -> list[int]:
    """Ports free now and not handed out before: a node binds its ports only once it starts, so
    without `taken` two nodes could be given the same one."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in taken:
            taken.add(port)
            ports.append(port)
    return ports


@dataclass
class RunningNode:
    spec: NodeSpec
    process: subprocess.Popen[bytes]
    node_manager_port: int

    def processes(self) -> list[psutil.Process]:
        """The `ray start` process and everything below it: raylet, agents, workers, vLLM."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


def _signal_all(processes: Sequence[psutil.Process], signum: int) -> None:
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            process.send_signal(signum)


class LocalCluster:
    """Start with `with LocalCluster(workers) as cluster:`; everything started is gone after."""

    def __init__(self, workers: Sequence[NodeSpec], head_cpus: int = 2) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="capserve-rc-"))
        self._token = self._root / "auth_token"
        self._token.write_text(secrets.token_hex(32))
        self._head = NodeSpec(
            name="head", head=True, num_cpus=head_cpus, resources={HEAD_RESOURCE: 100}
        )
        self._workers = list(workers)
        self._nodes: dict[str, RunningNode] = {}
        self._ports: set[int] = set()
        self.gcs_port, self.http_port, self.metrics_port = _free_ports(3, self._ports)
        # Chosen once: every `ray start` and `serve run` of the cluster must see the same modes.
        self._serve_env = ray_env(selected_flags(), lambda: _free_ports(1, self._ports)[0])
        self.logs = self._root / "logs"
        self.logs.mkdir()

    @property
    def nodes(self) -> dict[str, RunningNode]:
        """The nodes still running, by name."""
        return dict(self._nodes)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def env(self) -> dict[str, str]:
        """What every process of this cluster runs with, drivers included: Ray's token auth
        with this cluster's own token, so no other Ray on the machine can join or be joined, and
        Serve's modes (CAPSERVE_SERVE_FLAGS)."""
        return (
            os.environ
            | {
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self._token),
                "RAY_USAGE_STATS_ENABLED": "0",
                "HF_HUB_OFFLINE": "1",
            }
            | self._serve_env
        )

    def __enter__(self) -> Self:
        try:
            # One at a time: a worker can only join once the head's GCS answers, and nodes
            # registering together on a busy 2-core machine time out.
            for count, spec in enumerate([self._head, *self._workers], start=1):
                self._start_node(spec)
                self._wait_for_nodes(count)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_node(self, spec: NodeSpec) -> None:
        (
            node_manager,
            object_manager,
            agent,
            agent_grpc,
            runtime_env_agent,
            metrics,
            client,
        ) = _free_ports(7, self._ports)
        command = [
            str(BIN / "ray"),
            "start",
            "--block",
            "--disable-usage-stats",
            f"--num-cpus={spec.num_cpus}",
            f"--resources={json.dumps(spec.resources)}",
            f"--labels={NODE_LABEL}={spec.name}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env_agent}",
            f"--metrics-export-port={self.metrics_port if spec.head else metrics}",
        ]
        if spec.head:
            command += [
                "--head",
                f"--port={self.gcs_port}",
                f"--ray-client-server-port={client}",
                "--include-dashboard=false",
                f"--temp-dir={self._root / 'ray'}",
            ]
        else:
            command.append(f"--address={self.address}")
        if spec.cores is not None:
            command = ["taskset", "--cpu-list", ",".join(map(str, spec.cores)), *command]
        log = (self.logs / f"{spec.name}.log").open("wb")
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._nodes[spec.name] = RunningNode(spec, process, node_manager)

    def _wait_for_nodes(self, count: int) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            for node in self._nodes.values():
                if node.process.poll() is not None:
                    log = (self.logs / f"{node.spec.name}.log").read_text(errors="replace")
                    raise ClusterError(
                        f"node {node.spec.name} exited with {node.process.returncode}:\n"
                        f"{log[-3000:]}"
                    )
            if self.alive_nodes() >= count:
                return
            time.sleep(1)
        raise ClusterError(f"{count} nodes did not join within {NODE_START_TIMEOUT_S:.0f} s")

    def alive_nodes(self) -> int:
        """Nodes the GCS counts as alive, as `ray list nodes` would show them."""
        return self._ask_driver("sum(node['Alive'] for node in ray.nodes())") or 0

    def node_ids(self) -> dict[str, str]:
        """Ray's node id of each alive node, by the name in its `capserve.io/node` label."""
        return (
            self._ask_driver(
                f"{{node['Labels'].get({NODE_LABEL!r}): node['NodeID'] "
                "for node in ray.nodes() if node['Alive']}"
            )
            or {}
        )

    def _ask_driver(self, expression: str, imports: tuple[str, ...] = ()) -> Any:
        """`expression` (which may use `ray` and what `imports` bring) evaluated by a short Ray
        driver attached to the cluster; None when the driver fails."""
        script = "; ".join(
            [
                "import json, ray",
                *imports,
                f"ray.init(address={self.address!r}, log_to_driver=False)",
                f"print({DRIVER_ANSWER!r} + json.dumps({expression}))",
            ]
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            check=False,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return driver_answer(result.stdout) if result.returncode == 0 else None

    def deploy(self, serve_config: dict[str, Any]) -> None:
        """Deploys (or updates) the app with `serve run`, as a user would, and waits for it to
        answer `/readyz`."""
        path = self._root / "serve_config.yaml"
        path.write_text(yaml.safe_dump(serve_config, sort_keys=False))
        command = [str(BIN / "serve"), "run", "--non-blocking", f"--address={self.address}"]
        result = subprocess.run(
            [*command, str(path)],
            check=False,
            cwd=PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=APP_READY_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise ClusterError(f"serve run failed ({result.returncode}):\n{result.stderr[-3000:]}")
        self.wait_settled()
        self.wait_ready()

    def wait_settled(self, timeout_s: float = APP_READY_TIMEOUT_S) -> None:
        """Waits until Serve runs the app with every deployment at its target replica count.
        `/readyz` alone is not enough after an update: the old replicas answer it while Serve
        is still replacing them one by one."""
        expression = (
            "{name: [app.status.value] + [d.status.value for d in app.deployments.values()] "
            "for name, app in serve.status().applications.items()}"
        )
        deadline = time.monotonic() + timeout_s
        statuses: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            # Only this question needs Serve, whose import costs a driver ~0.5 s of CPU.
            statuses = self._ask_driver(expression, imports=("from ray import serve",)) or {}
            if statuses and all(
                app[0] == "RUNNING" and all(status == "HEALTHY" for status in app[1:])
                for app in statuses.values()
            ):
                return
            time.sleep(2)
        raise ClusterError(f"the app did not settle within {timeout_s:.0f} s: {statuses}")

    def wait_ready(self, timeout_s: float = APP_READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"{self.base_url}/readyz", timeout=10)
                if answer.status_code == 200:
                    return
                last = f"{answer.status_code} {answer.text[:300]}"
            except httpx.HTTPError as error:
                last = repr(error)
            time.sleep(2)
        raise ClusterError(f"the app was not ready within {timeout_s:.0f} s: {last}")

    def kill_node(self, name: str) -> None:
        """SIGKILL to the node's every process at once: the machine is gone."""
        node = self._nodes.pop(name)
        _signal_all(node.processes(), signal.SIGKILL)
        node.process.wait(timeout=30)

    def stop(self) -> None:
        """Stops every node this cluster started (never another Ray on the machine): SIGTERM,
        which `ray start --block` passes on, then SIGKILL to what is left."""
        processes = [process for node in self._nodes.values() for process in node.processes()]
        _signal_all(processes, signal.SIGTERM)
        _, alive = psutil.wait_procs(processes, timeout=15)
        _signal_all(alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=15)
        self._nodes.clear()
        shutil.rmtree(self._root, ignore_errors=True)

    def leftover_processes(self) -> list[psutil.Process]:
        """Processes still running from this cluster's temp folder (none after `stop`)."""
        marker = str(self._root)
        leftovers = []
        for process in psutil.process_iter(["cmdline"]):
            if any(marker in part for part in process.info["cmdline"] or ()):
                leftovers.append(process)
        return leftovers


def cluster_serve_config(
    http_port: int, engine_replicas: int, cache_dir: Path, result_cache: bool = True
) -> dict[str, Any]:
    """`serve_config.yaml` laid out over the cluster: `engine_replicas` engine replicas, each
    needing the worker-only resource and at most one per node; every other deployment (ingress,
    capability runners, stats, batch runner) on the head, next to the proxy, through Serve's
    per-deployment overrides, so losing a worker takes engines and nothing else."""
    config = yaml.safe_load((PROJECT_ROOT / "serve_config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    app = config["applications"][0]
    app["args"]["cache_dir"] = str(cache_dir)
    if not result_cache:
        app["args"]["cache"] = {"enabled": False}
    for model in app["args"]["models"]:
        model["deployment"] = copy.deepcopy(model.get("deployment", {})) | {
            "num_replicas": engine_replicas,
            "resources": {ENGINE_RESOURCE: 1},
            "max_replicas_per_node": 1,
        }
    on_head = {"num_cpus": 0, "resources": {HEAD_RESOURCE: 1}}
    # `@serve.deployment` classes are `Deployment`s, which type checkers cannot follow.
    head_deployments = [Ingress.name, StatsRecorder.name, BatchRunner.name] + [  # type: ignore[attr-defined]
        runner_name(capability.name)
        for capability in map(CapabilityConfig.model_validate, app["args"]["capabilities"])
        if capability.placement == "deployment"
    ]
    app["deployments"] = [{"name": name, "ray_actor_options": on_head} for name in head_deployments]
    return config


@contextmanager
def running_app(
    workers: int, engine_replicas: int, pin_cores: bool = False, result_cache: bool = True
) -> Iterator[LocalCluster]:
    with LocalCluster(worker_specs(workers, pin_cores)) as cluster:
        cluster.deploy(
            cluster_serve_config(
                cluster.http_port, engine_replicas, cluster.logs.parent / "cache", result_cache
            )
        )
        yield cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engine-replicas", type=int, default=2)
    parser.add_argument("--pin-cores", action="store_true", help="worker i on core i only")
    args = parser.parse_args()
    with running_app(args.workers, args.engine_replicas, args.pin_cores) as cluster:
        print(f"capserve on {args.workers} worker nodes: {cluster.base_url}", flush=True)
        print(f"ray address {cluster.address}; logs in {cluster.logs}", flush=True)
        with suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
