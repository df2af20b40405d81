"""A job store that cannot be reached: the ingress and the batch runner start anyway, online
routes answer, batch routes answer 503 with Retry-After, and all work once the database is
there, without a restart. The database is a real PostgreSQL server that refuses connections to
a database until the test creates it."""

import asyncio
import copy
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from starlette.testclient import TestClient

from batchjobs.store import JobStore, StoreUnavailableError
from batchjobs.store_opener import StoreOpener
from deployments.batch.runner import BatchRunner
from deployments.config import AppConfig, parse_app_config
from deployments.http.ingress import Ingress
from tests.fakes import FakeClock
from tests.unit.test_guarded_handle import FakeHandle, echo

RETRY_S = 0.2


class Opening:
    """Stands in for `open_store`: fails until `up`, slowly."""

    def __init__(self) -> None:
        self.up = False
        self.attempts = 0
        self.store = object()

    async def __call__(self, url: str) -> Any:
        self.attempts += 1
        await asyncio.sleep(0.05)
        if not self.up:
            raise StoreUnavailableError("the job store's database cannot be reached")
        return self.store


async def test_the_opener_retries_at_most_every_retry_s() -> None:
    clock, opening = FakeClock(), Opening()
    stores = StoreOpener("postgresql://db/jobs", retry_s=5, clock=clock, opener=opening)
    with pytest.raises(StoreUnavailableError) as first:
        await stores.get()
    assert first.value.retry_after_s == 5 and "retry in 5 s" in str(first.value)
    clock.now += 2
    with pytest.raises(StoreUnavailableError) as second:
        await stores.get()
    assert second.value.retry_after_s == pytest.approx(3) and opening.attempts == 1
    opening.up = True
    clock.now += 3
    # Callers that meet one attempt share it.
    assert await asyncio.gather(stores.get(), stores.get()) == [opening.store] * 2
    assert await stores.get() is opening.store and opening.attempts == 2


@pytest.fixture
def missing_database(postgres_url: str) -> Any:
    """The URL of a database that does not exist yet, and a function that creates it."""
    name = f"jobs_{uuid.uuid4().hex}"

    def create() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")

    yield f"{postgres_url.rsplit('/', 1)[0]}/{name}", create
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def app_config(project_root: Path, tmp_path: Path, store_url: str) -> AppConfig:
    serve_config = yaml.safe_load((project_root / "serve_config.yaml").read_text())
    args = copy.deepcopy(serve_config["applications"][0]["args"])
    args["cache_dir"] = str(tmp_path)
    args["batch"] = {"store_url": store_url, "store_retry_s": RETRY_S}
    return parse_app_config(args)


def test_online_routes_start_without_the_store_and_batch_routes_wait_for_it(
    project_root: Path, tmp_path: Path, missing_database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project_root)
    store_url, create_database = missing_database
    config = app_config(project_root, tmp_path, store_url)
    # The class serve.ingress wrapped, built without Ray: these routes need no handle.
    ingress = Ingress.func_or_class.__bases__[0](config, {}, {}, FakeHandle(echo), None)
    client = TestClient(ingress.__serve_build_asgi_app__())

    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/models").json()["data"][0]["id"] == "minilm"
    for method, path in (("GET", "/v1/files"), ("GET", "/v1/batches"), ("POST", "/v1/batches")):
        answer = client.request(method, path, json={})
        assert answer.status_code == 503, (path, answer.text)
        assert answer.headers["retry-after"] == "1"
        error = answer.json()["error"]
        assert error["code"] == "service_unavailable"
        assert "job store is not reachable" in error["message"]
        assert "postgres" not in error["message"].lower()

    create_database()
    time.sleep(RETRY_S)
    listing = client.get("/v1/files")
    assert listing.status_code == 200 and listing.json()["data"] == []
    upload = client.post(
        "/v1/files", files={"file": ("in.jsonl", b"{}\n")}, data={"purpose": "batch"}
    )
    assert upload.status_code == 200
    assert client.get(f"/v1/files/{upload.json()['id']}").status_code == 200


async def test_the_batch_runner_starts_without_the_store_and_takes_work_once_it_is_there(
    project_root: Path, tmp_path: Path, missing_database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project_root)
    store_url, create_database = missing_database
    runner = BatchRunner.func_or_class(app_config(project_root, tmp_path, store_url), {}, {}, None)
    with pytest.raises(StoreUnavailableError):
        await runner._scheduler_on_store()
    assert await runner.active_batches() == []

    create_database()
    await asyncio.sleep(RETRY_S)
    scheduler = await runner._scheduler_on_store()
    await scheduler.take_work()
    assert await runner.active_batches() == []
    store: JobStore = await runner._stores.get()
    await store.close()
