"""The files under cluster/ against Ray's own schemas, KubeRay's required fields and capserve's
config checks, so that none can drift from what Ray, KubeRay or capserve accepts. Nothing here
reaches Kubernetes or a cloud."""

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.runtime_env import RuntimeEnv
from ray.serve.schema import ServeDeploySchema

from capserve.keys import new_key
from deployments.app import batch_runner_options, check_config, ingress_options, runner_options
from deployments.config import AppConfig
from deployments.engine.placement import distributed_executor_backend, engine_deployment_options
from deployments.http.auth import is_loopback
from deployments.ray_compat import check_cluster_launcher_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
IMPORT_PATH = "deployments.app:build_app"
SERVE_PORT = 8000
DASHBOARD_PORT = 8265
# The dashboard and its agent, which some KubeRay versions ask for a RayService's status.
DASHBOARD_PORTS = {DASHBOARD_PORT, 52365}


class Manifest(BaseModel):
    """Only the fields KubeRay needs; the rest of a Kubernetes object is let through."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Container(Manifest):
    name: str = Field(min_length=1)
    image: str = Field(min_length=1)
    resources: dict[str, dict[str, str | int]] = {}

    @property
    def gpus(self) -> int:
        return int(self.resources.get("limits", {}).get("nvidia.com/gpu", 0))


class PodSpec(Manifest):
    containers: list[Container] = Field(min_length=1)


class PodTemplate(Manifest):
    spec: PodSpec
    metadata: dict[str, Any] = {}

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.get("labels", {})

    def mounts_secret_at(self, folder: Path) -> str | None:
        """The Secret every container mounts at `folder`; None unless all of them do."""
        volumes = {volume["name"]: volume for volume in self.spec.model_extra.get("volumes", [])}
        secrets = set()
        for container in self.spec.containers:
            mounts = {
                m["mountPath"]: m["name"] for m in container.model_extra.get("volumeMounts", [])
            }
            volume = volumes.get(mounts.get(str(folder), ""), {})
            secrets.add(volume.get("secret", {}).get("secretName"))
        (secret,) = secrets
        return secret


class HeadGroupSpec(Manifest):
    rayStartParams: dict[str, str]
    template: PodTemplate


class WorkerGroupSpec(Manifest):
    groupName: str = Field(min_length=1)
    replicas: int = Field(ge=0)
    minReplicas: int = Field(ge=0)
    maxReplicas: int = Field(ge=1)
    rayStartParams: dict[str, str]
    template: PodTemplate

    @model_validator(mode="after")
    def _replicas_within_bounds(self) -> "WorkerGroupSpec":
        assert self.minReplicas <= self.replicas <= self.maxReplicas, self.groupName
        return self

    @property
    def gpus_per_pod(self) -> int:
        return max(container.gpus for container in self.template.spec.containers)


class RayClusterSpec(Manifest):
    rayVersion: str
    headGroupSpec: HeadGroupSpec
    workerGroupSpecs: list[WorkerGroupSpec] = Field(min_length=1)

    def templates(self) -> list[PodTemplate]:
        return [group.template for group in [self.headGroupSpec, *self.workerGroupSpecs]]

    def containers(self) -> list[Container]:
        return [
            container for template in self.templates() for container in template.spec.containers
        ]


class Metadata(Manifest):
    name: str = Field(min_length=1)


class RayServiceSpec(Manifest):
    serveConfigV2: str
    rayClusterSpec: RayClusterSpec


class RayService(Manifest):
    apiVersion: Literal["ray.io/v1"]
    kind: Literal["RayService"]
    metadata: Metadata
    spec: RayServiceSpec


class RayJobSpec(Manifest):
    entrypoint: str = Field(min_length=1)
    runtimeEnvYAML: str
    shutdownAfterJobFinishes: bool
    rayClusterSpec: RayClusterSpec | None = None
    clusterSelector: dict[str, str] | None = None

    @model_validator(mode="after")
    def _one_cluster(self) -> "RayJobSpec":
        assert (self.rayClusterSpec is None) != (self.clusterSelector is None)
        return self


class RayJob(Manifest):
    apiVersion: Literal["ray.io/v1"]
    kind: Literal["RayJob"]
    metadata: Metadata
    spec: RayJobSpec


@pytest.fixture()
def in_working_dir(project_root: Path, monkeypatch) -> None:
    """The runtime_env's working_dir holds the repository; relative paths resolve against it."""
    monkeypatch.chdir(project_root)


def checked_serve_config(
    text: str, keys_file: Path | None = None
) -> tuple[dict[str, Any], AppConfig]:
    """A one-app serve config as `serve deploy` and capserve's build_app would check it, with
    `keys_file` (a local one) in place of the `auth.api_keys_file` the cluster mounts."""
    config = yaml.safe_load(text)
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == IMPORT_PATH
    for capability in app["args"]["capabilities"]:
        # An inline capability has no runner: its `deployment` settings would do nothing.
        assert "deployment" not in capability or capability.get("placement") == "deployment"
    args = copy.deepcopy(app["args"])
    if keys_file is not None:
        args["auth"]["api_keys_file"] = str(keys_file)
    checked = check_config(args)
    # What build_app checks once it knows where Serve listens: no anonymous access from outside.
    assert checked.auth.exposure_problem(config["http_options"]["host"]) is None
    return app, checked


@pytest.fixture()
def keys_file(tmp_path: Path) -> Path:
    """A valid api_keys_file, standing in for the one a cluster mounts from its secret."""
    _, entry = new_key("team-a", ["classify"])
    path = tmp_path / "api_keys.yaml"
    path.write_text(yaml.safe_dump({"api_keys": [entry.model_dump(exclude_none=True)]}))
    return path


def keys_folder(app: dict[str, Any]) -> Path:
    return Path(app["args"]["auth"]["api_keys_file"]).parent


def check_network_policy(policy: dict[str, Any], cluster: RayClusterSpec, dashboard_peers: int):
    """The policy covers every Ray pod, lets any of them reach any other, opens at most the API
    port to everyone and the dashboard to `dashboard_peers` peers besides the Ray pods."""
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for template in cluster.templates():
        assert selector.items() <= template.labels.items(), template.labels
    rules = policy["spec"]["ingress"]
    assert {"from": [{"podSelector": {"matchLabels": selector}}]} in rules
    for rule in rules:
        ports = [port["port"] for port in rule.get("ports", [])]
        if "from" not in rule:
            assert ports == [SERVE_PORT], rule
        elif rule["from"] != [{"podSelector": {"matchLabels": selector}}]:
            assert ports[0] == DASHBOARD_PORT and set(ports) <= DASHBOARD_PORTS, rule
            assert len(rule["from"]) == dashboard_peers, rule


def deployment_options(config: AppConfig) -> dict[str, dict[str, Any]]:
    """Serve options of each deployment the app builds, by name; but the stats recorder's, a
    counter that reserves nothing."""
    options = {"Ingress": ingress_options(config.ingress)}
    options["batch-runner"] = batch_runner_options(config.batch)
    engines = [engine_deployment_options(model) for model in config.models]
    runners = [runner_options(capability) for capability in config.deployed_capabilities]
    return options | {option["name"]: option for option in [*engines, *runners]}


def max_replicas(options: dict[str, Any]) -> int:
    return options.get("num_replicas") or options["autoscaling_config"]["max_replicas"]


def reserved_cpus(config: AppConfig) -> dict[str, float]:
    """CPUs each deployment's replica reserves."""
    return {
        name: option["ray_actor_options"]["num_cpus"]
        for name, option in deployment_options(config).items()
    }


def check_cpus_fit(config: AppConfig, cluster_cpus: float) -> None:
    """Every replica reserves CPUs, and the cluster has them for every deployment at its most
    replicas."""
    cpus = reserved_cpus(config)
    assert [name for name, reserved in cpus.items() if reserved <= 0] == []
    most = sum(
        cpus[name] * max_replicas(option) for name, option in deployment_options(config).items()
    )
    assert most <= cluster_cpus


def pod_cpus(container: Container) -> float:
    return float(container.resources["limits"]["cpu"])


def cluster_cpus(cluster: RayClusterSpec) -> float:
    """The CPUs Ray offers replicas at the worker groups' most pods, plus the head's unless it
    starts with none."""
    head_cpus = cluster.headGroupSpec.rayStartParams.get("num-cpus")
    head = cluster.headGroupSpec.template.spec.containers[0]
    workers = sum(
        group.maxReplicas * pod_cpus(group.template.spec.containers[0])
        for group in cluster.workerGroupSpecs
    )
    return workers + (pod_cpus(head) if head_cpus is None else float(head_cpus))


def documents(path: Path) -> dict[str, dict[str, Any]]:
    return {document["kind"]: document for document in yaml.safe_load_all(path.read_text())}


def check_cluster_images(cluster: RayClusterSpec) -> None:
    assert cluster.rayVersion == ray.__version__
    for container in cluster.containers():
        assert container.image.startswith(f"rayproject/ray:{ray.__version__}-"), container.image


def test_the_2x8_gpu_example_shards_the_70b_engine_over_both_nodes(in_working_dir, keys_file):
    path = CLUSTER / "examples" / "serve_config.2x8gpu.yaml"
    app, config = checked_serve_config(path.read_text(), keys_file)
    llama = config.model("llama70b")
    options = engine_deployment_options(llama)
    assert len(options["placement_group_bundles"]) == 16
    assert options["placement_group_strategy"] == "PACK"
    assert distributed_executor_backend(llama) == "ray"
    bge = engine_deployment_options(config.model("bge"))
    assert bge["autoscaling_config"]["min_replicas"] == 1
    assert bge["autoscaling_config"]["max_replicas"] == 4
    assert bge["ray_actor_options"]["num_gpus"] == 1
    assert ingress_options(config.ingress)["autoscaling_config"]["min_replicas"] == 2
    assert config.rate_limits.redis_url is not None
    assert app["runtime_env"]["working_dir"] == "local:///home/ray/capserve"


def test_the_launcher_config_is_valid_for_ray_up_and_fits_the_2x8_example(
    in_working_dir, keys_file
):
    cluster = yaml.safe_load((CLUSTER / "launcher" / "gpu-cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    check_cluster_launcher_config(cluster)
    assert cluster["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"

    app, config = checked_serve_config(
        (CLUSTER / "examples" / "serve_config.2x8gpu.yaml").read_text(), keys_file
    )
    assert f"local://{next(iter(cluster['file_mounts']))}" == app["runtime_env"]["working_dir"]
    # Every node gets the keys the example reads, from outside the synced repository.
    assert str(keys_folder(app)) in cluster["file_mounts"]
    assert not cluster["file_mounts"][str(keys_folder(app))].startswith(".")
    # The dashboard runs any job its API is sent: it stays on the head's loopback.
    for command in cluster["head_start_ray_commands"]:
        flags = dict(f.partition("=")[::2] for f in shlex.split(command) if f.startswith("--"))
        assert is_loopback(flags.get("--dashboard-host", "127.0.0.1")), command
    node_types = cluster["available_node_types"].values()
    llama_gpus = sum(
        node.get("min_workers", 0) * node["resources"].get("GPU", 0)
        for node in node_types
        if "capserve_embed" not in node["resources"]
    )
    assert llama_gpus >= config.model("llama70b").engine_args.world_size
    bge = config.model("bge").deployment
    embed_nodes = sum(
        node["max_workers"] for node in node_types if "capserve_embed" in node["resources"]
    )
    assert set(bge.resources) == {"capserve_embed"}
    assert embed_nodes >= bge.max_replicas


def test_the_rayservice_embeds_a_config_capserve_accepts(in_working_dir, keys_file):
    manifests = documents(CLUSTER / "kuberay" / "rayservice.yaml")
    service = RayService.model_validate(manifests["RayService"])
    cluster = service.spec.rayClusterSpec
    check_cluster_images(cluster)
    app, config = checked_serve_config(service.spec.serveConfigV2, keys_file)
    # Keys from a Kubernetes Secret on every pod (ingress replicas run on the workers too).
    assert {t.mounts_secret_at(keys_folder(app)) for t in cluster.templates()} == {
        "capserve-api-keys"
    }
    check_network_policy(manifests["NetworkPolicy"], cluster, dashboard_peers=1)
    serve_config = yaml.safe_load(service.spec.serveConfigV2)
    assert serve_config["http_options"]["host"] == "0.0.0.0"
    RuntimeEnv(**app["runtime_env"])
    gpu_groups = [group for group in cluster.workerGroupSpecs if group.gpus_per_pod > 0]
    assert gpu_groups, "no worker group has nvidia.com/gpu limits"
    for model in config.models:
        assert model.deployment.accelerator == "gpu"
        # A sharded replica's GPUs share one pod (STRICT_PACK) unless pipeline stages span pods.
        assert max(group.gpus_per_pod for group in gpu_groups) >= (
            model.engine_args.tensor_parallel_size
        )
    replicas_that_fit = sum(group.maxReplicas * group.gpus_per_pod for group in gpu_groups)
    assert replicas_that_fit >= sum(model.deployment.max_replicas for model in config.models)


def test_the_rayjob_runs_the_batch_job_with_a_config_capserve_accepts(in_working_dir, keys_file):
    manifests = documents(CLUSTER / "kuberay" / "rayjob.yaml")
    job = RayJob.model_validate(manifests["RayJob"])
    cluster = job.spec.rayClusterSpec
    assert cluster is not None
    check_cluster_images(cluster)
    assert any(group.gpus_per_pod > 0 for group in cluster.workerGroupSpecs)

    command = shlex.split(job.spec.entrypoint)
    assert command[:3] == ["python", "-m", "deployments.batch.job"]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    assert {"--input", "--output", "--config"} <= set(flags)

    # --config names the ConfigMap's file where the head mounts it; the input and output live
    # on the head's volume.
    head = cluster.headGroupSpec.template.spec.containers[0]
    mounts = {mount["mountPath"]: mount["name"] for mount in head.model_extra["volumeMounts"]}
    config_path = Path(flags["--config"])
    assert mounts[str(config_path.parent)] == "serve-config"
    assert Path(flags["--input"]).parent == Path(flags["--output"]).parent
    assert str(Path(flags["--input"]).parent) in mounts
    config_map = manifests["ConfigMap"]
    app, _ = checked_serve_config(config_map["data"][config_path.name], keys_file)
    assert {t.mounts_secret_at(keys_folder(app)) for t in cluster.templates()} == {
        "capserve-api-keys"
    }
    # The operator and the job's submitter pod reach the dashboard.
    check_network_policy(manifests["NetworkPolicy"], cluster, dashboard_peers=2)

    job_env = yaml.safe_load(job.spec.runtimeEnvYAML)
    RuntimeEnv(**job_env)
    # The driver and the app it deploys run the same code.
    assert job_env["working_dir"] == app["runtime_env"]["working_dir"]
    volumes = {
        volume["name"]: volume
        for volume in cluster.headGroupSpec.template.spec.model_extra["volumes"]
    }
    assert volumes["serve-config"]["configMap"]["name"] == config_map["metadata"]["name"]
    claim = manifests["PersistentVolumeClaim"]["metadata"]["name"]
    assert volumes["batches"]["persistentVolumeClaim"]["claimName"] == claim


def test_the_2x8_example_reserves_cpus_the_launcher_cluster_has(in_working_dir, keys_file):
    launcher = yaml.safe_load((CLUSTER / "launcher" / "gpu-cluster.yaml").read_text())
    nodes = launcher["available_node_types"]
    assert nodes[launcher["head_node_type"]]["resources"]["CPU"] == 0
    workers = sum(
        node["max_workers"] * node["resources"]["CPU"]
        for name, node in nodes.items()
        if name != launcher["head_node_type"]
    )
    _, config = checked_serve_config(
        (CLUSTER / "examples" / "serve_config.2x8gpu.yaml").read_text(), keys_file
    )
    check_cpus_fit(config, workers)


def test_the_kuberay_apps_reserve_cpus_their_pods_have(in_working_dir, keys_file):
    service = RayService.model_validate(
        documents(CLUSTER / "kuberay" / "rayservice.yaml")["RayService"]
    )
    _, config = checked_serve_config(service.spec.serveConfigV2, keys_file)
    # Replicas stay off the head, which runs Serve's controller and proxy.
    assert service.spec.rayClusterSpec.headGroupSpec.rayStartParams["num-cpus"] == "0"
    check_cpus_fit(config, cluster_cpus(service.spec.rayClusterSpec))

    manifests = documents(CLUSTER / "kuberay" / "rayjob.yaml")
    job = RayJob.model_validate(manifests["RayJob"])
    _, config = checked_serve_config(manifests["ConfigMap"]["data"]["serve_config.yaml"], keys_file)
    assert job.spec.rayClusterSpec is not None
    check_cpus_fit(config, cluster_cpus(job.spec.rayClusterSpec))


def test_the_default_app_reserves_no_cpus_of_the_two_cores_it_is_sized_for(in_working_dir):
    """At one CPU each the ingress, engine and batch runner would ask for 3 of the 2 CPUs Ray
    counts, and Serve would never place them all (serve_config.yaml says so where it sets 0)."""
    _, config = checked_serve_config((CLUSTER.parent / "serve_config.yaml").read_text())
    assert set(reserved_cpus(config).values()) == {0}


def test_every_vllm_pin_under_cluster_is_the_one_the_code_is_written_against():
    import vllm

    pins = {
        str(path.relative_to(CLUSTER)): set(re.findall(r"\bvllm==([\w.]+)", path.read_text()))
        for path in [*CLUSTER.rglob("*.yaml"), CLUSTER / "README.md"]
    }
    pinned = [
        "README.md",
        "kuberay/rayjob.yaml",
        "kuberay/rayservice.yaml",
        "launcher/gpu-cluster.yaml",
    ]
    assert {name: versions for name, versions in pins.items() if versions} == {
        name: {vllm.__version__} for name in pinned
    }
