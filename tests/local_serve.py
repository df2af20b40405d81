"""Deployments built and called in this process as Serve builds and calls them, for unit tests
of the deployment classes without Ray: the plain class under `@serve.deployment`, handles that
reach it, what `@serve.batch` needs to run outside a replica, and the whole app `build_app`
binds, over fake engines."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import pytest
from ray import serve
from ray.exceptions import RayTaskError

from deployments.batch.runner import BatchRunner
from deployments.calls.guarded_handle import GuardedCallee
from deployments.config import AppConfig
from deployments.dag.capability_clients import inline_settings
from deployments.dag.runner import CapabilityRunner
from deployments.engine.deployment import EngineDeployment
from deployments.http.ingress import Ingress
from tests.fakes import FakeEngine, serving

Replica = TypeVar("Replica")


class OwnBatchQueue:
    """A `@serve.batch` method whose queue is each instance's own. Serve's queue belongs to the
    decorated function, one per class, and each replica is a process of its own; in one process,
    instances would share it (a batch runs on its first call's instance) and outlive the test."""

    def __init__(self, name: str, shared: Any) -> None:
        self._name = name
        self._shared = shared
        # The settings the decorator was given, as Ray's wrapper keeps them.
        self._settings = {
            "max_batch_size": shared._get_max_batch_size(),
            "batch_wait_timeout_s": shared._get_batch_wait_timeout_s(),
            "max_concurrent_batches": shared.set_max_batch_size.__self__.max_concurrent_batches,
        }

    def __get__(self, instance: Any, owner: type) -> Any:
        if instance is None:
            return self._shared
        # Kept in the instance's __dict__, which later lookups find before this descriptor.
        own = serve.batch(**self._settings)(self._shared.__wrapped__.__get__(instance, owner))
        instance.__dict__[self._name] = own
        return own


def batching_classes() -> set[type]:
    """The classes of deployments/ (deployment classes and what they hold) and their bases."""
    found: set[type] = set()
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("deployments."):
            continue
        for value in vars(module).values():
            cls = value.func_or_class if isinstance(value, serve.Deployment) else value
            if inspect.isclass(cls):
                found.update(c for c in cls.__mro__ if c.__module__.startswith("deployments."))
    return found


@pytest.fixture
def serve_replicas(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What Serve gives each replica, stood in for in this process: the replica context
    (`@serve.batch` reads `max_ongoing_requests` from it), and batch queues of its own."""
    deployment = SimpleNamespace(max_ongoing_requests=1_000_000)
    monkeypatch.setattr(
        serve, "get_replica_context", lambda: SimpleNamespace(_deployment_config=deployment)
    )
    for cls in batching_classes():
        for name, method in list(vars(cls).items()):
            if hasattr(method, "set_max_batch_size") and hasattr(method, "__wrapped__"):
                monkeypatch.setattr(cls, name, OwnBatchQueue(name, method))
    yield


async def replica(cls: type[Replica], *args: Any, **kwargs: Any) -> Replica:
    """An instance of a deployment's class made as a Serve replica makes it, whose `__init__`
    may be async: `EngineDeployment.func_or_class`, or for a `@serve.ingress` class the class
    it wraps, `Ingress.func_or_class.__bases__[0]`."""
    if inspect.iscoroutinefunction(getattr(cls, "__del__", None)):
        # Serve awaits an async `__del__` as the replica shuts down (`shut_down` does here);
        # Python's own finalizer would make the coroutine and drop it unawaited.
        cls = type(cls.__name__, (cls,), {"__del__": lambda self: None})
    instance = cls.__new__(cls)
    started = instance.__init__(*args, **kwargs)  # type: ignore[misc]
    if inspect.isawaitable(started):
        await started
    return instance


async def shut_down(instance: Any) -> None:
    """What Serve does as a replica stops: awaits its async `__del__`; and what the process's
    end would do, its background tasks (reporting, polling) ended."""
    finalizers = (c.__dict__.get("__del__") for c in type(instance).__mro__)
    finalizer = next((f for f in finalizers if inspect.iscoroutinefunction(f)), None)
    if finalizer is not None:
        await finalizer(instance)
    for value in vars(instance).values():
        if isinstance(value, asyncio.Task):
            value.cancel()


def crossed(value: Any) -> Any:
    """`value` as the other process gets it: Serve pickles what crosses."""
    return pickle.loads(pickle.dumps(value))


class LocalResponse:
    """The one-item stream a streamed Serve call answers with; the replica takes it at once."""

    def __init__(self, replica: GuardedCallee, method: str, args: tuple[Any, ...]) -> None:
        self._method = method
        self._answer = asyncio.ensure_future(self._call(replica, method, args))

    @staticmethod
    async def _call(replica: GuardedCallee, method: str, args: tuple[Any, ...]) -> Any:
        [result] = [item async for item in replica.guarded_call(method, *args)]
        return crossed(result)

    async def _fetch_future_result_async(self) -> None:
        """What `ray_compat.accepted` awaits: the replica took the call."""

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            result = await self._answer
        except Exception as error:  # noqa: BLE001 - every error of a replica crosses wrapped
            # A replica's error reaches the caller as Ray wraps it.
            raise RayTaskError(
                self._method, traceback.format_exc(), error
            ).as_instanceof_cause() from None
        yield result

    def cancel(self) -> None:
        self._answer.cancel()


class ReplicaHandle:
    """A `DeploymentHandle` of one replica built in this process. The `GuardedHandle` callers'
    `options(stream=True).guarded_call.remote(method, *args)` is answered by the replica; any
    other `handle.method.remote(*args)` (`stats.record`, `batch_runner.wake`) is recorded in
    `sent` and, where the replica has the method, run without waiting, as Serve's would be."""

    def __init__(self, replica: Any = None) -> None:
        self._replica = replica
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    def options(self, *, stream: bool = False) -> ReplicaHandle:
        return self

    def __getattr__(self, method: str) -> SimpleNamespace:
        if method.startswith("__"):
            raise AttributeError(method)
        if method == "guarded_call":
            return SimpleNamespace(remote=self._guarded_call)
        return SimpleNamespace(remote=lambda *args: self._send(method, args))

    def _guarded_call(self, method: str, *args: Any) -> LocalResponse:
        assert isinstance(self._replica, GuardedCallee), "this handle reaches no GuardedCallee"
        return LocalResponse(self._replica, method, crossed(args))

    def _send(self, method: str, args: tuple[Any, ...]) -> None:
        self.sent.append((method, args))
        run = getattr(self._replica, method, None)
        if run is not None and inspect.isawaitable(outcome := run(*crossed(args))):
            asyncio.ensure_future(outcome)


@dataclass(frozen=True)
class LocalApp:
    """The replicas `build_app` binds (one of each), built and wired in this process; the stats
    recorder is a handle that records what it is sent."""

    ingress: Any
    batch_runner: Any
    engines: dict[str, Any]
    runners: dict[str, Any]
    stats: ReplicaHandle

    def http(self) -> httpx.AsyncClient:
        """A client of the ingress's ASGI app, as Serve's proxy passes it requests."""
        app = self.ingress.__serve_build_asgi_app__()
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")

    async def stop(self) -> None:
        replicas = [self.ingress, self.batch_runner, *self.engines.values(), *self.runners.values()]
        for instance in replicas:
            await shut_down(instance)


async def local_app(config: AppConfig, engines: Mapping[str, FakeEngine]) -> LocalApp:
    """The app of `config` with each model's engine deployment serving the given fake engine,
    its capabilities loaded with their settings as Serve's first `reconfigure` loads them."""
    stats = ReplicaHandle()
    engine_replicas = {
        model.name: await replica(
            EngineDeployment.func_or_class, model, stats, engine_cls=serving(engines[model.name])
        )
        for model in config.models
    }
    engine_handles = {name: ReplicaHandle(r) for name, r in engine_replicas.items()}
    runners = {}
    for capability in config.deployed_capabilities:
        runners[capability.name] = await replica(
            CapabilityRunner.func_or_class,
            capability.name,
            capability.import_path,
            engine_handles,
            {model.name: model for model in config.models},
            config.cache_dir,
            capability.batching,
            config.cache,
            stats,
        )
        await runners[capability.name].reconfigure(capability.settings_json())
    runner_handles = {name: ReplicaHandle(r) for name, r in runners.items()}
    batch_runner = await replica(
        BatchRunner.func_or_class, config, engine_handles, runner_handles, stats
    )
    # The class `@serve.ingress` wrapped.
    ingress = await replica(
        Ingress.func_or_class.__bases__[0],
        config,
        engine_handles,
        runner_handles,
        stats,
        ReplicaHandle(batch_runner),
    )
    for hosting in (ingress, batch_runner):
        await hosting.reconfigure(inline_settings(config))
    return LocalApp(ingress, batch_runner, engine_replicas, runners, stats)


@pytest.fixture
async def local_apps(
    serve_replicas: None,
) -> AsyncIterator[Callable[[AppConfig, Mapping[str, FakeEngine]], Awaitable[LocalApp]]]:
    """Builds apps with `local_app`; stops them after the test."""
    built: list[LocalApp] = []

    async def build(config: AppConfig, engines: Mapping[str, FakeEngine]) -> LocalApp:
        built.append(await local_app(config, engines))
        return built[-1]

    yield build
    for app in built:
        await app.stop()
