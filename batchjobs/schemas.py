"""OpenAI's File and Batch objects, and the lines of batch input, output and error files.

Field for field what the `openai` SDK parses, so a client written against OpenAI reads ours.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BATCH_ENDPOINTS = ("/v1/classify", "/v1/chat/completions", "/v1/embeddings")
Endpoint = Literal["/v1/classify", "/v1/chat/completions", "/v1/embeddings"]
FilePurpose = Literal["batch", "batch_output"]
BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
COMPLETION_WINDOWS_S = {"24h": 24 * 3600}
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


def expiry_of(created_at: int, completion_window: str) -> int:
    return created_at + COMPLETION_WINDOWS_S[completion_window]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileRecord(BaseModel):
    """A file as the store keeps it: the public object and where its bytes are."""

    file: FileObject
    path: str
    tenant: str | None = None
    """The API key name that owns it; None when made with keys off (or by a `batch_job`)."""


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False

    @model_validator(mode="after")
    def _ends_of_the_page(self) -> FileList:
        return _with_ends(self)


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = Field(default=None, description="1-based line of the input file.")


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int = 0

    def plus(self, other: BatchUsage) -> BatchUsage:
        return BatchUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            input_tokens_details=InputTokensDetails(
                cached_tokens=self.input_tokens_details.cached_tokens
                + other.input_tokens_details.cached_tokens
            ),
            output_tokens=self.output_tokens + other.output_tokens,
            output_tokens_details=OutputTokensDetails(
                reasoning_tokens=self.output_tokens_details.reasoning_tokens
                + other.output_tokens_details.reasoning_tokens
            ),
            total_tokens=self.total_tokens + other.total_tokens,
        )


# OpenAI's bounds on a file's expires_after: an hour to 30 days.
MIN_EXPIRES_AFTER_S, MAX_EXPIRES_AFTER_S = 3600, 30 * 24 * 3600


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRES_AFTER_S, le=MAX_EXPIRES_AFTER_S)


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = RequestCounts()
    usage: BatchUsage = BatchUsage()
    metadata: dict[str, str] | None = None
    output_expires_after: ExpiresAfter | None = Field(
        default=None,
        description="When the batch's output and error files expire, as it was created with.",
    )
    traceparent: str | None = Field(
        default=None,
        description="W3C trace context the batch runs under: the traceparent of the request "
        "that created it, or a new trace. Each output line carries a span of it.",
    )

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False

    @model_validator(mode="after")
    def _ends_of_the_page(self) -> BatchList:
        return _with_ends(self)


Page = TypeVar("Page", FileList, BatchList)


def _with_ends(page: Page) -> Page:
    """`first_id` and `last_id` name the page's ends, as OpenAI's list objects do."""
    page.first_id = page.data[0].id if page.data else None
    page.last_id = page.data[-1].id if page.data else None
    return page


class CreateBatchRequest(BaseModel):
    """The body of `POST /v1/batches`."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1)
    endpoint: Endpoint
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None
    output_expires_after: ExpiresAfter | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_within_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} pairs, got {len(value)}")
        for key, item in value.items():
            if len(key) > MAX_METADATA_KEY_CHARS:
                raise ValueError(f"key {key[:20]!r}... is over {MAX_METADATA_KEY_CHARS} chars")
            if len(item) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(f"value of {key!r} is over {MAX_METADATA_VALUE_CHARS} chars")
        return value


class InputLine(BaseModel):
    """One line of a batch input file."""

    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(min_length=1, max_length=512)
    method: str
    url: str
    body: dict[str, Any]


class LineResponse(BaseModel):
    status_code: int
    request_id: str
    traceparent: str | None = Field(
        default=None, description="The line's span in the batch's trace (W3C traceparent)."
    )
    body: dict[str, Any]


class LineError(BaseModel):
    code: str
    message: str


class OutputLine(BaseModel):
    """One line of an output or error file: a response, or an error when none was made."""

    id: str
    custom_id: str
    response: LineResponse | None
    error: LineError | None


class ChunkRecord(BaseModel):
    """A checkpoint: the chunk's lines are done and their output lines are durably in these
    files (written and fsynced before the record is stored)."""

    index: int = Field(ge=0)
    first_line: int = Field(ge=0, description="0-based index of the chunk's first input line.")
    lines: int = Field(ge=0)
    output_path: str | None = None
    error_path: str | None = None
    completed: int = 0
    failed: int = 0
    expired: int = Field(default=0, description="Lines not run because the window closed.")
    usage: BatchUsage = BatchUsage()
