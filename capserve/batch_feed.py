"""`capserve classify --batch`: the rows through the Batch API instead of online requests.

The rows go up as one batch input file, a `/v1/classify` line per request-sized chunk (custom_id
`rows-<first>-<last>`); the batch's id is kept in a state file beside the output, so a run
stopped while the batch works picks the same batch up again instead of submitting another. Once
the batch has completed its answers are handed back in input order, like the online feeder's;
rows of a line the batch could not answer are sent online, where a refused request is split until
the rows at fault stand alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError

from capserve.client import AsyncClient, BatchObject, ClassifyResponse, OutputLine, output_lines
from capserve.feeder import Feeder, Request
from capserve.rows import Outcome, Row
from capserve.tracing import TraceParent

_CUSTOM_ID = re.compile(r"^rows-(\d+)-(\d+)$")


class BatchEndedError(Exception):
    """The batch ended without completing (failed, expired or cancelled)."""

    def __init__(self, batch: BatchObject) -> None:
        errors = "; ".join(error.message for error in (batch.errors.data if batch.errors else []))
        super().__init__(f"batch {batch.id} {batch.status}{': ' + errors if errors else ''}")
        self.batch = batch


class BatchState(BaseModel):
    """The batch a run submitted: what a rerun picks up."""

    batch_id: str
    first_row: int
    last_row: int


def state_path(output: Path) -> Path:
    return output.with_name(output.name + ".batch.json")


def batch_input(chunks: Sequence[list[Row]], request: Request) -> bytes:
    """A batch input file: a `/v1/classify` line per chunk of rows."""
    body: dict[str, object] = {}
    if request.capabilities:
        body["capabilities"] = list(request.capabilities)
    if request.strategy is not None:
        body["strategy"] = request.strategy
    lines = (
        {
            "custom_id": f"rows-{chunk[0].number}-{chunk[-1].number}",
            "method": "POST",
            "url": "/v1/classify",
            "body": {"texts": [row.text for row in chunk], **body},
        }
        for chunk in chunks
    )
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


def answers_by_row(lines: Sequence[OutputLine]) -> dict[int, Outcome]:
    """Each answered row's result, by row number, from a batch's output lines."""
    answers: dict[int, Outcome] = {}
    for line in lines:
        match = _CUSTOM_ID.match(line.custom_id)
        if match is None or line.response is None or line.response.status_code != 200:
            continue
        try:
            results = ClassifyResponse.model_validate(line.response.body).results
        except ValidationError:
            continue
        first = int(match.group(1))
        answers.update(zip(range(first, first + len(results)), results, strict=True))
    return answers


class BatchFeed:
    def __init__(
        self,
        client: AsyncClient,
        feeder: Feeder,
        request: Request,
        state: Path,
        trace: TraceParent,
        poll_interval_s: float = 2.0,
    ) -> None:
        self._client = client
        self._feeder = feeder
        self._request = request
        self._state = state
        self._trace = trace
        self._poll_interval_s = poll_interval_s

    async def submit(self, chunks: Sequence[list[Row]]) -> str:
        """The id of the batch covering `chunks`: the one a stopped run submitted, or a new one."""
        first, last = chunks[0][0].number, chunks[-1][-1].number
        if self._state.exists():
            state = BatchState.model_validate_json(self._state.read_text())
            if state.first_row <= first and last <= state.last_row:
                return state.batch_id
        upload = await self._client.upload_file(
            batch_input(chunks, self._request), f"rows-{first}-{last}.jsonl"
        )
        batch = await self._client.create_batch(upload.id, traceparent=self._trace.child())
        state = BatchState(batch_id=batch.id, first_row=first, last_row=last)
        self._state.write_text(state.model_dump_json())
        return batch.id

    async def feed(
        self, chunks: Sequence[list[Row]], on_update: Callable[[BatchObject], None]
    ) -> AsyncIterator[tuple[list[Row], list[Outcome]]]:
        """Each chunk with its outcomes, in input order, once the batch has completed."""
        if not chunks:
            return
        batch_id = await self.submit(chunks)
        batch = await self._client.wait_batch(batch_id, self._poll_interval_s, on_update)
        if batch.status != "completed":
            self._state.unlink(missing_ok=True)
            raise BatchEndedError(batch)
        lines: list[OutputLine] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id is not None:
                lines += output_lines(await self._client.file_content(file_id))
        answers = answers_by_row(lines)
        for chunk in chunks:
            missing = [row for row in chunk if row.number not in answers]
            if missing:
                answers.update(
                    zip(
                        (row.number for row in missing),
                        await self._feeder.classify(missing),
                        strict=True,
                    )
                )
            yield chunk, [answers[row.number] for row in chunk]
        self._state.unlink(missing_ok=True)
