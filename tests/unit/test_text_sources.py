"""Each text a capability runs on says where it came from: the request and item, and for a batch
line the batch and custom_id, which alert events derive their stable ids from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from capabilities.alerts import AlertList
from capabilities.base import BatchLine, TextSource
from capabilities.batching import RunCall, RunReply
from deployments.batch.lines import BatchLines
from deployments.config import parse_app_config
from deployments.dag.classify_service import ClassifyService
from deployments.http.openai_api import OpenAIEndpoints
from tests.fakes import classified
from tests.unit.test_batch_lines import TRACEPARENT
from tests.unit.test_config import default_args  # noqa: F401 - fixture


class Recording:
    """A capability client that answers every text and keeps the calls it was sent."""

    def __init__(self, name: str, output: Any) -> None:
        self.name = name
        self.output = output
        self.calls: list[RunCall] = []

    async def run_many(self, calls: Sequence[RunCall]) -> list[RunReply]:
        self.calls += calls
        return [RunReply(outputs=[self.output] * len(call.texts), version="v1") for call in calls]

    async def describe(self) -> Any:
        raise NotImplementedError


async def test_a_batch_lines_texts_carry_its_batch_id_custom_id_and_items(
    default_args,  # noqa: F811
) -> None:
    config = parse_app_config(default_args)
    clients = {
        "classification": Recording("classification", classified("card_lost")),
        "alerts": Recording("alerts", AlertList(alerts=[])),
    }
    service = ClassifyService(config, clients, None)  # type: ignore[arg-type]
    lines = BatchLines(config, service, OpenAIEndpoints(config.models, {}, config.limits), None)
    body = {
        "items": [
            {"id": "t-1", "text": "I lost my card"},
            {"text": "where is my card"},
            {"id": "t-3", "text": "I lost my card"},
        ],
        "capabilities": ["alerts"],
    }
    line = BatchLine(batch_id="batch_9", custom_id="row-4")
    outcome = await lines.run("/v1/classify", body, "req_abc", None, line, TRACEPARENT)
    assert outcome.status_code == 200

    [call] = clients["alerts"].calls
    assert call.texts == ["I lost my card", "where is my card"]
    assert call.sources == [
        [
            TextSource(request_id="req_abc", item_index=0, item_id="t-1", batch_line=line),
            TextSource(request_id="req_abc", item_index=2, item_id="t-3", batch_line=line),
        ],
        [TextSource(request_id="req_abc", item_index=1, item_id=None, batch_line=line)],
    ]
