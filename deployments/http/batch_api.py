"""OpenAI's Files and Batch API on the ingress: `/v1/files` and `/v1/batches`.

The routes only record what was asked (uploads, batches, cancels) in the job store and wake the
batch runner; the runner does the work, so an ingress restart loses nothing. The store is opened
by the first route that needs it: while it cannot be reached these routes answer 503 with
Retry-After, and the rest of the API is not affected.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from batchjobs.files import FileStorage, new_file_id, sortable_id
from batchjobs.handlers import check_batch_metadata
from batchjobs.schemas import (
    MAX_EXPIRES_AFTER_S,
    MIN_EXPIRES_AFTER_S,
    BatchList,
    BatchObject,
    CreateBatchRequest,
    ExpiresAfter,
    FileDeleted,
    FileList,
    FileObject,
    FileRecord,
    expiry_of,
)
from batchjobs.store import JobStore
from batchjobs.store_opener import StoreOpener
from capserve.tracing import HEADER as TRACE_HEADER
from capserve.tracing import TraceParent
from deployments.config import AppConfig
from deployments.http.auth import principal_of
from deployments.http.errors import (
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    UnprocessableError,
    UnsupportedMediaTypeError,
)
from deployments.http.request_body import read_json
from deployments.http.routes import ApiRoute, Endpoint

UPLOAD_READ_BYTES = 1 << 20
# Form fields besides the file are short; a multipart body's framing adds a little to the file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class FileListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purpose: str | None = None
    limit: int = Field(default=10_000, ge=1, le=10_000)
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None


class BatchListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    after: str | None = None


class UploadForm(BaseModel):
    """The non-file fields of `POST /v1/files`, as the SDK names them in the form."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    purpose: Literal["batch"]
    expires_after_anchor: Literal["created_at"] | None = Field(
        default=None, alias="expires_after[anchor]"
    )
    expires_after_seconds: int | None = Field(
        default=None,
        alias="expires_after[seconds]",
        ge=MIN_EXPIRES_AFTER_S,
        le=MAX_EXPIRES_AFTER_S,
    )

    @model_validator(mode="after")
    def _anchor_and_seconds_together(self) -> UploadForm:
        if (self.expires_after_anchor is None) != (self.expires_after_seconds is None):
            raise ValueError(
                "send expires_after[anchor] and expires_after[seconds] together, or neither"
            )
        return self

    def expires_after(self) -> ExpiresAfter | None:
        if self.expires_after_anchor is None or self.expires_after_seconds is None:
            return None
        return ExpiresAfter(anchor=self.expires_after_anchor, seconds=self.expires_after_seconds)


StoreEndpoint = Callable[[Request, JobStore], Awaitable[Response]]


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(UPLOAD_READ_BYTES):
        yield chunk


class BatchApi:
    def __init__(
        self,
        config: AppConfig,
        stores: StoreOpener,
        storage: FileStorage,
        wake_runner: Callable[[], object],
    ) -> None:
        self._config = config
        self._stores = stores
        self._storage = storage
        self._wake_runner = wake_runner

    def _on_store(self, endpoint: StoreEndpoint) -> Endpoint:
        """The endpoint, given the store once it is open (a 503 until then)."""

        @functools.wraps(endpoint)
        async def with_store(request: Request) -> Response:
            return await endpoint(request, await self._stores.get())

        return with_store

    def routes(self) -> list[ApiRoute]:
        file_errors = (404,)
        return [
            ApiRoute(
                "/v1/files",
                "POST",
                self._on_store(self.upload_file),
                "Upload a JSONL batch input file",
                "batch",
                form=UploadForm,
                answer=FileObject,
                errors=(400, 413, 415, 422),
            ),
            ApiRoute(
                "/v1/files",
                "GET",
                self._on_store(self.list_files),
                "The caller's files",
                "batch",
                query=FileListQuery,
                answer=FileList,
                errors=(422,),
            ),
            ApiRoute(
                "/v1/files/{file_id}",
                "GET",
                self._on_store(self.get_file),
                "A file",
                "batch",
                answer=FileObject,
                errors=file_errors,
            ),
            ApiRoute(
                "/v1/files/{file_id}",
                "DELETE",
                self._on_store(self.delete_file),
                "Delete a file",
                "batch",
                answer=FileDeleted,
                errors=(400, 404),
            ),
            ApiRoute(
                "/v1/files/{file_id}/content",
                "GET",
                self._on_store(self.file_content),
                "A file's bytes",
                "batch",
                binary=True,
                errors=file_errors,
            ),
            ApiRoute(
                "/v1/batches",
                "POST",
                self._on_store(self.create_batch),
                "Run a batch over an uploaded file",
                "batch",
                body=CreateBatchRequest,
                answer=BatchObject,
                errors=(400, 404, 413, 422),
            ),
            ApiRoute(
                "/v1/batches",
                "GET",
                self._on_store(self.list_batches),
                "The caller's batches, newest first",
                "batch",
                query=BatchListQuery,
                answer=BatchList,
                errors=(422,),
            ),
            ApiRoute(
                "/v1/batches/{batch_id}",
                "GET",
                self._on_store(self.get_batch),
                "A batch, with live request counts",
                "batch",
                answer=BatchObject,
                errors=(404,),
            ),
            ApiRoute(
                "/v1/batches/{batch_id}/cancel",
                "POST",
                self._on_store(self.cancel_batch),
                "Cancel a batch; its finished lines stay in the output",
                "batch",
                answer=BatchObject,
                errors=(400, 404),
            ),
        ]

    async def upload_file(self, request: Request, store: JobStore) -> JSONResponse:
        max_bytes = self._config.batch.max_file_bytes
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UnsupportedMediaTypeError(
                "send the file as multipart/form-data with fields 'file' and 'purpose'"
            )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD_BYTES:
            raise PayloadTooLargeError(
                f"the upload is {declared} bytes; files may be at most {max_bytes} bytes"
            )
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise BadRequestError("the form has no file; send it in the field 'file'", "file")
            fields = {key: value for key, value in form.items() if isinstance(value, str)}
            upload_form = UploadForm.model_validate(fields)
            expires_after = upload_form.expires_after()
            file_id = new_file_id()
            path, size = await self._storage.save_upload(file_id, _chunks(upload), max_bytes)
        now = int(time.time())
        file = FileObject(
            id=file_id,
            bytes=size,
            created_at=now,
            filename=upload.filename or "upload",
            purpose=upload_form.purpose,
            expires_at=now + expires_after.seconds if expires_after else None,
        )
        tenant = principal_of(request).tenant
        await store.create_file(FileRecord(file=file, path=str(path), tenant=tenant))
        return JSONResponse(file.model_dump(mode="json"))

    async def list_files(self, request: Request, store: JobStore) -> JSONResponse:
        query = FileListQuery.model_validate(dict(request.query_params))
        records, has_more = await store.list_files(
            query.purpose, query.limit, query.order, query.after, principal_of(request).tenant
        )
        listing = FileList(data=[record.file for record in records], has_more=has_more)
        return JSONResponse(listing.model_dump(mode="json"))

    async def _file(self, request: Request, store: JobStore, file_id: str) -> FileRecord:
        record = await store.get_file(file_id, principal_of(request).tenant)
        expired = record is not None and (record.file.expires_at or float("inf")) <= time.time()
        if record is None or expired:
            raise NotFoundError(f"no file with id {file_id!r}", "file_id")
        return record

    async def get_file(self, request: Request, store: JobStore) -> JSONResponse:
        record = await self._file(request, store, request.path_params["file_id"])
        return JSONResponse(record.file.model_dump(mode="json"))

    async def file_content(self, request: Request, store: JobStore) -> FileResponse:
        record = await self._file(request, store, request.path_params["file_id"])
        return FileResponse(
            record.path, media_type="application/octet-stream", filename=record.file.filename
        )

    async def delete_file(self, request: Request, store: JobStore) -> JSONResponse:
        record = await self._file(request, store, request.path_params["file_id"])
        running = await store.batches_using_file(record.file.id)
        if running:
            raise BadRequestError(
                f"file {record.file.id} is the input of batch {running[0].id}, which is "
                f"{running[0].status}; cancel it or wait for it to end first",
                "file_id",
            )
        await store.delete_file(record.file.id)
        # The record's path: an upload's is under uploads/, a batch output's under batches/.
        await asyncio.to_thread(self._storage.delete, Path(record.path))
        return JSONResponse(FileDeleted(id=record.file.id).model_dump())

    async def create_batch(self, request: Request, store: JobStore) -> JSONResponse:
        payload = await read_json(request, self._config.limits)
        body = CreateBatchRequest.model_validate(payload)
        try:
            check_batch_metadata(self._config.batch.result_handlers, body.metadata)
        except ValueError as error:
            raise UnprocessableError(str(error), "metadata") from None
        tenant = principal_of(request).tenant
        record = await store.get_file(body.input_file_id, tenant)
        if record is None:
            raise NotFoundError(f"no file with id {body.input_file_id!r}", "input_file_id")
        if record.file.purpose != "batch":
            raise BadRequestError(
                f"file {body.input_file_id} has purpose {record.file.purpose!r}; upload the "
                "input with purpose 'batch'",
                "input_file_id",
            )
        now = int(time.time())
        batch = BatchObject(
            id=sortable_id("batch_"),
            endpoint=body.endpoint,
            input_file_id=body.input_file_id,
            completion_window=body.completion_window,
            status="validating",
            created_at=now,
            expires_at=expiry_of(now, body.completion_window),
            metadata=body.metadata,
            output_expires_after=body.output_expires_after,
            traceparent=str(
                TraceParent.parse(request.headers.get(TRACE_HEADER)) or TraceParent.new()
            ),
        )
        await store.create_batch(batch, tenant)
        self._wake_runner()
        return JSONResponse(batch.model_dump(mode="json"))

    async def list_batches(self, request: Request, store: JobStore) -> JSONResponse:
        query = BatchListQuery.model_validate(dict(request.query_params))
        batches, has_more = await store.list_batches(
            query.limit, query.after, principal_of(request).tenant
        )
        listing = BatchList(data=batches, has_more=has_more)
        return JSONResponse(listing.model_dump(mode="json"))

    async def get_batch(self, request: Request, store: JobStore) -> JSONResponse:
        batch_id = request.path_params["batch_id"]
        batch = await store.get_batch(batch_id, principal_of(request).tenant)
        if batch is None:
            raise NotFoundError(f"no batch with id {batch_id!r}", "batch_id")
        return JSONResponse(batch.model_dump(mode="json"))

    async def cancel_batch(self, request: Request, store: JobStore) -> JSONResponse:
        batch_id = request.path_params["batch_id"]
        if await store.get_batch(batch_id, principal_of(request).tenant) is None:
            raise NotFoundError(f"no batch with id {batch_id!r}", "batch_id")
        now = int(time.time())

        def cancel(current: BatchObject) -> BatchObject | None:
            if current.terminal or current.status == "cancelling":
                return None
            return current.model_copy(update={"status": "cancelling", "cancelling_at": now})

        batch = await store.update_batch(batch_id, cancel)
        if batch is None:
            raise NotFoundError(f"no batch with id {batch_id!r}", "batch_id")
        if batch.terminal and batch.status != "cancelled":
            raise BadRequestError(
                f"batch {batch_id} is already {batch.status}; only a batch that has not ended "
                "can be cancelled",
                "batch_id",
            )
        self._wake_runner()
        return JSONResponse(batch.model_dump(mode="json"))
