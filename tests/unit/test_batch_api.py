"""The Files and Batch routes over a real SQLite store and folder: what DELETE removes, what a
listing shows, and what a batch keeps of its request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batchjobs.executor import output_file_id
from batchjobs.files import FileStorage
from batchjobs.schemas import FileObject, FileRecord
from batchjobs.store import JobStore
from batchjobs.store_opener import StoreOpener
from deployments.config import parse_app_config
from deployments.http.auth import ANONYMOUS
from deployments.http.batch_api import BatchApi
from deployments.http.errors import ApiError, handle_error
from deployments.http.routes import ApiRoute
from tests.unit.test_config import default_args  # noqa: F401 - fixture

LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/classify", "body": {"texts": ["x"]}}\n'


def anonymous(route: ApiRoute) -> Route:
    async def endpoint(request: Request) -> Response:
        request.state.principal = ANONYMOUS
        return await route.endpoint(request)

    return Route(route.path, endpoint, methods=[route.method])


@dataclass
class Api:
    client: httpx.AsyncClient
    store: JobStore
    storage: FileStorage


@pytest.fixture
async def api(default_args, tmp_path: Path) -> AsyncIterator[Api]:  # noqa: F811
    config = parse_app_config(default_args)
    stores = StoreOpener(f"sqlite:///{tmp_path / 'jobs.db'}", retry_s=5)
    store = await stores.get()
    storage = FileStorage(tmp_path / "files")
    batch_api = BatchApi(config, stores, storage, wake_runner=lambda: None)
    app = Starlette(
        routes=[anonymous(route) for route in batch_api.routes()],
        exception_handlers={ApiError: handle_error},
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://capserve") as client:
        yield Api(client, store, storage)
    await stores.close()


async def upload(api: Api, **fields: str) -> dict:
    response = await api.client.post(
        "/v1/files",
        files={"file": ("in.jsonl", LINE)},
        data={"purpose": "batch", **fields},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_deleting_an_output_file_deletes_its_bytes(api: Api) -> None:
    # Outputs live under batches/<batch id>/, not under uploads/ like the files callers send.
    path = api.storage.batch_folder("batch_1") / "output.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"{}\n")
    file_id = output_file_id("batch_1", "output")
    await api.store.create_file(
        FileRecord(
            file=FileObject(
                id=file_id, bytes=3, created_at=1, filename="out.jsonl", purpose="batch_output"
            ),
            path=str(path),
        )
    )

    response = await api.client.delete(f"/v1/files/{file_id}")
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert not path.exists()
    assert (await api.client.get(f"/v1/files/{file_id}")).status_code == 404


async def test_deleting_an_upload_deletes_its_bytes(api: Api) -> None:
    file = await upload(api)
    path = api.storage.upload_path(file["id"])
    assert path.exists()
    assert (await api.client.delete(f"/v1/files/{file['id']}")).status_code == 200
    assert not path.exists()


async def test_expired_files_are_not_listed(api: Api) -> None:
    live = await upload(api)
    expiry = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    expired = await upload(api, **expiry)
    record = await api.store.get_file(expired["id"])
    assert record is not None
    # An hour passes: the file expired (its record stays until the runner's cleanup).
    past = record.file.model_copy(update={"expires_at": record.file.created_at - 1})
    await api.store.delete_file(expired["id"])
    await api.store.create_file(record.model_copy(update={"file": past}))

    listing = (await api.client.get("/v1/files")).json()
    assert [file["id"] for file in listing["data"]] == [live["id"]]
    assert (await api.client.get(f"/v1/files/{expired['id']}")).status_code == 404


async def test_a_batch_keeps_its_output_expiry(api: Api) -> None:
    file = await upload(api)
    policy = {"anchor": "created_at", "seconds": 7200}
    response = await api.client.post(
        "/v1/batches",
        json={
            "input_file_id": file["id"],
            "endpoint": "/v1/classify",
            "completion_window": "24h",
            "output_expires_after": policy,
        },
    )
    assert response.status_code == 200, response.text
    batch = await api.store.get_batch(response.json()["id"])
    assert batch is not None
    assert batch.output_expires_after is not None
    assert batch.output_expires_after.model_dump() == policy
