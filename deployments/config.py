"""Pydantic models of `serve_config.yaml`'s application args, validated once at start-up."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from batchjobs.executor import ExecutionSettings
from batchjobs.handlers import ResultHandlerConfig
from batchjobs.json_depth import DEFAULT_MAX_JSON_DEPTH
from capabilities.base import Capability
from capabilities.cache import CacheConfig
from capabilities.classification import MAX_AD_HOC_LABELS
from capabilities.errors import validation_problems
from capabilities.registry import Registry, RegistryError, capability_class
from deployments.engine.identity import model_identity
from deployments.http.auth import AuthConfig
from deployments.http.rate_limit import RateLimitConfig

PACKAGE_SCHEME = "pkg:"


class StrictModel(BaseModel):
    """Rejects unknown fields so a misspelt key stops start-up instead of being ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# Engine arguments capserve sets itself (`vllm_engine.engine_args_for`), with why: an
# `engine_args` entry may not override them.
CAPSERVE_ENGINE_ARGS = {
    "model": "set models[].model instead",
    "runner": "set models[].runner instead",
    "served_model_name": "the engine serves the model as models[].name",
    "distributed_executor_backend": "it follows tensor_parallel_size x pipeline_parallel_size",
    "disable_log_stats": "capserve counts tokens and requests itself (/v1/stats, /metrics)",
    "structured_outputs_config": "generate_json and chat need capserve's compact xgrammar output",
    "logprobs_mode": "one-step classification reads the log-probabilities after masking",
}


class EngineArgs(BaseModel):
    """vLLM engine arguments, passed to `AsyncEngineArgs` as given. The fields below are those
    capserve reads or defaults differently from vLLM; any other argument vLLM's `EngineArgs`
    takes (quantization, revision, tokenizer, kv_cache_dtype, ...) passes through too, its name
    checked against vLLM's own when the app is built (`vllm_engine.check_engine_args`): this
    module parses without vLLM."""

    model_config = ConfigDict(extra="allow", frozen=True)

    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    kv_cache_memory_bytes: int | None = Field(
        default=None,
        gt=0,
        description="The KV cache's size, instead of sizing it from gpu_memory_utilization, "
        "which on a CPU is a share of the whole memory node and must be free at start.",
    )
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    enable_prefix_caching: bool | None = Field(
        default=None, description="On when unset for runner generate; vLLM's choice for pooling."
    )
    max_num_seqs: int | None = Field(default=None, gt=0)
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    max_logprobs: int = Field(
        default=128,
        gt=0,
        description="Also the most labels generative classification scores in one decode step; "
        "larger label sets are decoded token by token.",
    )
    enforce_eager: bool = False
    scheduling_policy: Literal["priority", "fcfs"] = Field(
        default="priority",
        description="`priority`: among the requests waiting for a step, vLLM serves those of the "
        "most urgent request priority first (online high, online normal, then batch lines), in "
        "arrival order within one; `fcfs`: arrival order only, so requests' priorities are "
        "ignored.",
    )
    seed: int = 0
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _leaves_capserves_own_alone(self) -> EngineArgs:
        taken = sorted(set(self.model_extra or {}) & CAPSERVE_ENGINE_ARGS.keys())
        if taken:
            raise ValueError(
                "; ".join(
                    f"{name} is set by capserve: {CAPSERVE_ENGINE_ARGS[name]}" for name in taken
                )
            )
        return self

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


class BatchingConfig(StrictModel):
    """`@serve.batch` settings of an engine replica: how many calls coalesce, how long to wait."""

    max_batch_size: int = Field(default=32, gt=0)
    batch_wait_timeout_s: float = Field(default=0.005, ge=0)


class EnginePriorityConfig(StrictModel):
    """How an engine's low-priority requests (batch lines) yield to more urgent ones."""

    low_in_flight_while_online: int | None = Field(
        default=None,
        gt=0,
        description="The most low-priority requests (one per text) inside the engine while "
        "more urgent requests are about, and one while such a request is inside it; the rest "
        "wait their turn in the replica (deployments/engine/priority_gate.py). None: no cap, "
        "only vLLM's priority order (right for GPUs, whose steps cost little more when full).",
    )
    online_window_s: float = Field(
        default=0.5,
        gt=0,
        description="How long after the last more urgent request the cap still holds, so that "
        "steady online traffic keeps it on between requests.",
    )


class CallGuardConfig(StrictModel):
    """How callers of a deployment stop waiting on it: timeouts for a replica to take a call and
    to answer it, and a circuit breaker that answers 503 at once while the deployment keeps
    failing."""

    timeout_s: float = Field(
        default=60, gt=0, description="How long one call may take before it fails with 503."
    )
    startup_timeout_s: float = Field(
        default=900,
        gt=0,
        description="The start-up window: for this long after a caller's replica starts, the "
        "calls it makes to load its capabilities may wait for this deployment, which may be "
        "starting too (an engine loads for minutes on a CPU). Requests never wait this long.",
    )
    accept_timeout_s: float = Field(
        default=10,
        gt=0,
        description="How long a call may wait for a replica to take it: longer means every "
        "replica is saturated or none is running (e.g. while Serve replaces a dead one).",
    )
    failure_threshold: int = Field(
        default=3,
        ge=1,
        description="Consecutive timeouts or dead replicas after which calls fail at once.",
    )
    cooldown_s: float = Field(
        default=5, gt=0, description="How long calls fail at once before one probe is let through."
    )


# A runner call waits on its engine calls, so it must outlast their timeouts: an engine outage
# then reaches the ingress as the runner's answer, not as the runner's own breaker opening.
ENGINE_CALLS = CallGuardConfig()
RUNNER_CALLS = CallGuardConfig(timeout_s=120)
NUM_CPUS_DESCRIPTION = (
    "CPUs each replica reserves. 0 lets every replica share one small machine's cores (the "
    "2-core default app); on a cluster give each deployment the CPUs it uses, so that Ray places "
    "replicas where CPUs are free and its autoscaler adds nodes when they run out."
)
MAX_QUEUED_REQUESTS_DESCRIPTION = (
    "Requests each caller holds while every replica is busy or down; beyond them it answers "
    "503 at once."
)


class AutoscalingConfig(StrictModel):
    """Serve's autoscaler for one deployment: replicas follow load between two bounds.

    Serve aims for `target_ongoing_requests` per replica, averaged over `look_back_period_s`,
    and acts once the need has lasted the upscale or downscale delay."""

    min_replicas: int = Field(default=1, ge=0, description="0 lets the deployment scale to zero.")
    max_replicas: int = Field(ge=1)
    initial_replicas: int | None = Field(
        default=None, ge=0, description="Replicas at first deploy; min_replicas when unset."
    )
    target_ongoing_requests: float = Field(
        default=2.0, gt=0, description="Requests running or queued per replica that Serve aims for."
    )
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    downscale_to_zero_delay_s: float | None = Field(
        default=None,
        ge=0,
        description="Delay of the last step, 1 to 0; downscale_delay_s if unset.",
    )
    look_back_period_s: float = Field(default=30.0, gt=0)
    upscaling_factor: float | None = Field(
        default=None, gt=0, description="Scales each upscaling step; below 1 damps it."
    )
    downscaling_factor: float | None = Field(
        default=None, gt=0, description="Scales each downscaling step; below 1 damps it."
    )
    aggregation_function: Literal["mean", "max", "min"] = "mean"

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be at least min_replicas "
                f"({self.min_replicas})"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({initial}) must lie between min_replicas "
                f"({self.min_replicas}) and max_replicas ({self.max_replicas})"
            )
        return self

    def serve_options(self) -> dict[str, Any]:
        """Serve's `autoscaling_config` option."""
        return self.model_dump(exclude_none=True)


class ReplicaScaling(StrictModel):
    """How many replicas a deployment runs: a fixed count, or Serve's autoscaler."""

    num_replicas: int | None = Field(
        default=None,
        ge=1,
        description="A fixed replica count; 1 when neither it nor autoscaling_config is set.",
    )
    autoscaling_config: AutoscalingConfig | None = Field(
        default=None, description="Replicas follow load instead of a fixed count."
    )

    @model_validator(mode="after")
    def _fixed_or_autoscaled(self) -> ReplicaScaling:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError(
                "num_replicas and autoscaling_config exclude each other: remove num_replicas "
                "to autoscale, or autoscaling_config for a fixed count"
            )
        return self

    @property
    def max_replicas(self) -> int:
        if self.autoscaling_config is not None:
            return self.autoscaling_config.max_replicas
        return self.num_replicas or 1

    def scaling_options(self) -> dict[str, Any]:
        """Serve's `num_replicas` or `autoscaling_config` option."""
        if self.autoscaling_config is not None:
            return {"autoscaling_config": self.autoscaling_config.serve_options()}
        return {"num_replicas": self.num_replicas or 1}


class DeploymentConfig(ReplicaScaling):
    """Serve deployment settings of one engine, with where its replicas may run."""

    max_ongoing_requests: int = Field(default=256, gt=0)
    max_queued_requests: int = Field(default=512, gt=0, description=MAX_QUEUED_REQUESTS_DESCRIPTION)
    calls: CallGuardConfig = ENGINE_CALLS
    num_cpus: float = Field(default=0, ge=0, description=NUM_CPUS_DESCRIPTION)
    accelerator: Literal["cpu", "gpu"] = "cpu"
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each replica needs, e.g. `{capserve_engine: 1}` to keep "
        "engines on the nodes started with that resource. A sharded engine asks for them in the "
        "bundle its replica actor sits in.",
    )
    max_replicas_per_node: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="At most this many replicas on one node, so that replicas spread over "
        "nodes. Not for sharded engines: Serve places their placement groups itself.",
    )
    label_selector: dict[str, str] | None = Field(
        default=None,
        description="Node labels a replica's node must match (every bundle's, for a sharded "
        "engine), e.g. `{ray.io/accelerator-type: H100}`.",
    )

    @field_validator("resources")
    @classmethod
    def _custom_resources_only(cls, value: dict[str, float]) -> dict[str, float]:
        builtin = sorted({"CPU", "GPU"} & set(value))
        if builtin:
            raise ValueError(
                f"{builtin} come from num_cpus, accelerator and engine_args; name only custom "
                "resources here"
            )
        negative = sorted(name for name, amount in value.items() if amount <= 0)
        if negative:
            raise ValueError(f"amounts must be positive, got {negative}")
        return value

    @field_validator("label_selector")
    @classmethod
    def _valid_label_selector(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # Imported here: the config parses without Ray (clients and tools read it too).
        from deployments.ray_compat import label_selector_problem

        problem = label_selector_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class ModelConfig(StrictModel):
    """One model served by one engine deployment."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(
        description="A local folder, `pkg:<python package>[/<subfolder>]` for weights shipped in "
        "a package, or a Hugging Face id (resolved by vLLM where a hub is reachable)."
    )
    runner: Literal["generate", "pooling"]
    engine_args: EngineArgs = EngineArgs()
    batching: BatchingConfig = BatchingConfig()
    priority: EnginePriorityConfig = EnginePriorityConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    max_tokens: int = Field(default=256, gt=0, description="Output cap of generate_json.")
    chat_template: str | None = Field(
        default=None,
        description="A Jinja chat template, inline or the path of a file holding one, as vLLM's "
        "`--chat-template` takes it: chat completions render with it instead of the tokenizer's "
        "own (a base model's tokenizer has none). It writes every special token itself, "
        "`{{ bos_token }}` included. Only chat uses it, so it leaves the model's identity alone.",
    )

    @field_validator("model")
    @classmethod
    def _resolve_model(cls, value: str) -> str:
        return str(resolve_model_path(value))

    @field_validator("chat_template")
    @classmethod
    def _load_chat_template(cls, value: str | None) -> str | None:
        return None if value is None else load_chat_template(value)

    # Worked out once, where the config is validated, and carried with it to the replicas.
    _identity: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _identify(self) -> ModelConfig:
        self._identity = model_identity(self.name, self.model, self.runner, self.engine_kwargs())
        return self

    @property
    def identity(self) -> str:
        """What the engine's outputs depend on (`deployments.engine.identity`); caches key
        on it rather than on `name`."""
        return self._identity

    def engine_kwargs(self) -> dict[str, Any]:
        """`engine_args` as vLLM's keyword arguments, with capserve's defaults filled in."""
        kwargs = self.engine_args.model_dump(exclude_none=True)
        if self.runner == "generate":
            # Generative prompts open with the same instruction and label list, whose KV cache
            # prefix caching then computes once.
            kwargs.setdefault("enable_prefix_caching", True)
        return kwargs

    @model_validator(mode="after")
    def _sharding_needs_gpus(self) -> ModelConfig:
        world_size = self.engine_args.world_size
        if world_size > 1 and self.deployment.accelerator != "gpu":
            raise ValueError(
                "engine_args: tensor_parallel_size x pipeline_parallel_size > 1 needs "
                "deployment.accelerator: gpu"
            )
        if world_size > 1 and self.deployment.max_replicas_per_node is not None:
            raise ValueError(
                f"deployment.max_replicas_per_node: a sharded engine ({world_size} GPUs) runs "
                "in a placement group, which Serve places without it; remove it"
            )
        return self


class LimitsConfig(StrictModel):
    """Per-request bounds enforced by the ingress (and on batch lines) before any engine work."""

    max_items_per_request: int = Field(
        default=256, gt=0, description="Texts of a classify request; inputs of an embeddings one."
    )
    max_labels_per_request: int = Field(
        default=256,
        gt=0,
        le=MAX_AD_HOC_LABELS,
        description="Ad-hoc labels of a classify request (each is embedded, or prompted).",
    )
    max_chat_tokens: int = Field(
        default=1024,
        gt=0,
        description="The most tokens a chat completion may generate: larger max_tokens get a "
        "400; a request without max_tokens gets this many.",
    )
    max_text_chars: int = Field(default=2000, gt=0)
    max_body_bytes: int = Field(default=2_000_000, gt=0)
    max_json_depth: int = Field(
        default=DEFAULT_MAX_JSON_DEPTH,
        gt=0,
        description="How deep a JSON body may nest arrays and objects; deeper ones get a 400.",
    )


class IngressConfig(ReplicaScaling):
    """Serve settings of the HTTP ingress deployment."""

    max_ongoing_requests: int = Field(default=512, gt=0)
    max_queued_requests: int = Field(
        default=1024, gt=0, description=MAX_QUEUED_REQUESTS_DESCRIPTION
    )
    num_cpus: float = Field(default=0, ge=0, description=NUM_CPUS_DESCRIPTION)
    batching: BatchingConfig = Field(
        default=BatchingConfig(max_batch_size=64, batch_wait_timeout_s=0.002),
        description="How the replica coalesces concurrent requests' calls to each runner.",
    )


class RunnerDeploymentConfig(ReplicaScaling):
    """Serve settings of one capability runner; each capability scales on its own."""

    max_ongoing_requests: int = Field(default=512, gt=0)
    max_queued_requests: int = Field(
        default=1024, gt=0, description=MAX_QUEUED_REQUESTS_DESCRIPTION
    )
    num_cpus: float = Field(default=0, ge=0, description=NUM_CPUS_DESCRIPTION)
    calls: CallGuardConfig = RUNNER_CALLS


class CapabilityConfig(StrictModel):
    """One capability: a built-in by name, or a user class by import path, with its settings."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    import_path: str | None = Field(
        default=None, description="`package.module:ClassName` of a user Capability subclass."
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Validated by the capability's settings model; live-reloadable through "
        "the user_config of the replicas that host it (see `placement`).",
    )
    placement: Literal["inline", "deployment"] = Field(
        default="inline",
        description="`inline`: run in the ingress and batch runner replicas, coalescing across "
        "their requests, with no process crossing; `deployment`: a runner deployment of its own "
        "(`capability-<name>`) for a capability that needs its own replicas or resources.",
    )
    batching: BatchingConfig = Field(
        default=BatchingConfig(max_batch_size=64, batch_wait_timeout_s=0.01),
        description="How a `placement: deployment` runner coalesces calls; inline capabilities "
        "coalesce as `ingress.batching` says.",
    )
    deployment: RunnerDeploymentConfig = Field(
        default=RunnerDeploymentConfig(),
        description="The runner deployment of a `placement: deployment` capability.",
    )

    def capability_class(self) -> type[Capability]:
        return capability_class(self.name, self.import_path)

    def parsed_settings(self) -> BaseModel:
        return self.capability_class().settings_model.model_validate(self.settings)

    def settings_json(self) -> dict[str, Any]:
        """The validated settings as a replica's `user_config` carries them."""
        return self.parsed_settings().model_dump(mode="json", by_alias=True, exclude_none=True)


class BatchConfig(ExecutionSettings):
    """The Files and Batch API: where files and job state live, and how batches run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: Path | None = Field(
        default=None,
        description="Uploads, output files and the default SQLite store; `<cache_dir>/batches` "
        "when unset. Two apps on one machine need two folders.",
    )
    store_url: str | None = Field(
        default=None,
        description="`sqlite:///path.db` or `postgresql://user@host/db`; SQLite in `dir` when "
        "unset. Several runner replicas or nodes need PostgreSQL and a shared `dir`.",
    )
    max_concurrent_batches: int = Field(
        default=2, gt=0, description="Batches one runner replica works on at once."
    )
    store_retry_s: float = Field(
        default=5.0,
        gt=0,
        description="While the store cannot be reached, how long the ingress and runners wait "
        "between attempts to open it; batch routes answer 503 with this Retry-After meanwhile.",
    )
    poll_interval_s: float = Field(
        default=2.0, gt=0, description="How often a runner looks for batches to take or resume."
    )
    cleanup_interval_s: float = Field(
        default=300.0,
        gt=0,
        description="How often a runner deletes expired files and the chunk files of batches "
        "that ended.",
    )
    result_handlers: list[ResultHandlerConfig] = Field(
        default_factory=list,
        description="Called when a batch ends: `webhook`, `copy`, `postgres`, an import path or "
        "an entry point in `capserve.result_handlers`.",
    )
    runner_num_replicas: int = Field(default=1, ge=1)
    runner_num_cpus: float = Field(
        default=0,
        ge=0,
        description=f"Of each batch runner replica, which runs the inline capabilities for "
        f"batch lines. {NUM_CPUS_DESCRIPTION}",
    )

    @field_validator("dir")
    @classmethod
    def _absolute_dir(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()


class AppConfig(StrictModel):
    """Everything the default application needs; the `args` of `serve_config.yaml`."""

    models: list[ModelConfig] = Field(min_length=1)
    capabilities: list[CapabilityConfig] = Field(min_length=1)
    default_capabilities: list[str] = Field(
        default=["classification"],
        min_length=1,
        description="What an item gets when neither it nor its request names capabilities.",
    )
    limits: LimitsConfig = LimitsConfig()
    cache: CacheConfig = Field(
        default=CacheConfig(),
        description="Result cache of every capability runner: in-replica LRU, plus Redis if set.",
    )
    ingress: IngressConfig = IngressConfig()
    batch: BatchConfig = BatchConfig()
    auth: AuthConfig = Field(
        default=AuthConfig(),
        description="API keys; with none every endpoint is open, which the app allows only on a "
        "loopback host unless `allow_anonymous` is set.",
    )
    rate_limits: RateLimitConfig = RateLimitConfig()
    cache_dir: Path = Path("~/.cache/capserve")

    @field_validator("cache_dir")
    @classmethod
    def _absolute_cache_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _capabilities_form_a_dag(self) -> AppConfig:
        names = [model.name for model in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names}")
        capability_names = [capability.name for capability in self.capabilities]
        if len(set(capability_names)) != len(capability_names):
            raise ValueError(f"capabilities: names must be unique, got {capability_names}")
        classes = []
        for capability in self.capabilities:
            try:
                classes.append(capability.capability_class())
                settings = capability.parsed_settings()
            except RegistryError as error:
                raise ValueError(f"capabilities.{capability.name}: {error}") from None
            except ValidationError as error:
                raise ValueError(
                    validation_problems(error, f"capabilities.{capability.name}.settings")
                ) from None
            self._check_model_references(capability.name, settings)
        try:
            registry = Registry.of(classes)
        except RegistryError as error:
            raise ValueError(f"capabilities: {error}") from None
        unknown = sorted(set(self.default_capabilities) - set(registry.depends_on))
        if unknown:
            raise ValueError(f"default_capabilities: {unknown} are not configured capabilities")
        self._check_rate_limits_are_shared()
        return self

    def _check_rate_limits_are_shared(self) -> None:
        if self.rate_limits.redis_url is not None:
            return
        keys = self.auth.all_keys()
        default = self.rate_limits.default is not None
        limited = default or any(key.rate_limits is not None for key in keys)
        replicas = self.ingress.max_replicas
        if limited and replicas > 1:
            raise ValueError(
                f"rate_limits.redis_url: up to {replicas} ingress replicas would "
                "each count a key's limits alone; set a Redis URL for them to share"
            )
        # Without keys every caller is anonymous, which has the batch scope and default limits.
        batch_limited = any(
            "batch" in key.scopes and (default or key.rate_limits is not None) for key in keys
        ) or (not keys and default)
        if batch_limited:
            raise ValueError(
                "rate_limits.redis_url: batch lines count against their key's limits in the "
                "batch runner, a process apart from the ingress; set a Redis URL for both to "
                "share one set of buckets per key"
            )

    def _check_model_references(self, capability: str, settings: BaseModel) -> None:
        by_name = {model.name: model for model in self.models}
        for field, runner in (
            ("embedding_model", "pooling"),
            ("generative_model", "generate"),
            ("classifier_model", "pooling"),
        ):
            wanted = getattr(settings, field, None)
            if wanted is None:
                continue
            where = f"capabilities.{capability}.settings.{field}"
            if wanted not in by_name:
                raise ValueError(
                    f"{where}: no model named {wanted!r}; models are {sorted(by_name)}"
                )
            if by_name[wanted].runner != runner:
                raise ValueError(
                    f"{where}: model {wanted!r} has runner {by_name[wanted].runner!r}, "
                    f"needs {runner!r}"
                )

    @property
    def batch_dir(self) -> Path:
        return self.batch.dir or self.cache_dir / "batches"

    @property
    def batch_store_url(self) -> str:
        return self.batch.store_url or f"sqlite:///{self.batch_dir / 'jobs.db'}"

    def model(self, name: str) -> ModelConfig:
        return next(model for model in self.models if model.name == name)

    def capability(self, name: str) -> CapabilityConfig:
        return next(capability for capability in self.capabilities if capability.name == name)

    @property
    def deployed_capabilities(self) -> list[CapabilityConfig]:
        """Capabilities with a runner deployment of their own (`placement: deployment`)."""
        return [c for c in self.capabilities if c.placement == "deployment"]

    def registry(self) -> Registry:
        return Registry.of(capability.capability_class() for capability in self.capabilities)


class ConfigError(ValueError):
    """A bad configuration; its message names the field or file at fault."""


def resolve_model_path(value: str) -> Path | str:
    """Turns `pkg:` references and local paths into absolute folders that exist."""
    if value.startswith(PACKAGE_SCHEME):
        package, _, subfolder = value[len(PACKAGE_SCHEME) :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ValueError(f"model: package {package!r} is not installed")
        folder = Path(spec.origin).parent / (subfolder or "model")
        if not folder.is_dir():
            raise ValueError(f"model: {value!r} resolves to {folder}, which does not exist")
        return folder
    if value.startswith(("/", "./", "../", "~")):
        folder = Path(value).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"model: path {value!r} does not exist")
        return folder
    return value


# vLLM's test for a template given inline rather than as a file's path.
JINJA_CHARS = "{}\n"


def load_chat_template(value: str) -> str:
    """The template `value` is, or the one in the file it names (no Jinja characters), checked
    to parse as transformers compiles chat templates, so a broken one stops start-up."""
    template = value
    if not any(char in value for char in JINJA_CHARS):
        path = Path(value).expanduser().resolve()
        try:
            template = path.read_text()
        except OSError as error:
            raise ValueError(
                f"{value!r} is not a template (no Jinja tags) nor a readable file "
                f"({error.strerror}: {path}); give the template inline or the path of its file"
            ) from None
    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    except TemplateSyntaxError as error:
        raise ValueError(
            f"not a valid Jinja template: {error.message} (line {error.lineno})"
        ) from None
    return template


def parse_app_config(args: dict[str, Any]) -> AppConfig:
    """Validates raw args, turning pydantic's report into one readable `ConfigError`."""
    try:
        return AppConfig.model_validate(args)
    except ValidationError as error:
        raise ConfigError(f"invalid capserve config: {validation_problems(error)}") from None
