"""An example result handler: counts the labels of a finished `/v1/classify` batch.

It writes `<folder>/<batch id>.labels.json`:

    {"batch_id": "batch_...", "status": "completed", "succeeded_lines": 3, "failed_lines": 1,
     "items": 4, "labels": {"card_arrival": 3, "top_up_failed": 1}}

Enable it in serve_config.yaml (run from the project root so `examples` is importable):

    batch:
      result_handlers:
        - type: "examples.custom_result_handler:LabelSummary"
          settings: {folder: /var/lib/capserve/summaries}

Result handlers may run more than once for a batch (after a crash), so this one rewrites the same
summary each time: the file is replaced whole, never appended to.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from batchjobs.handlers import BatchResult, output_lines


class LabelSummarySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: Path


class LabelSummary:
    """Per-label counts of a classify batch's successful answers."""

    # load_handler validates the config's `settings` against this and passes the model in.
    settings_model = LabelSummarySettings

    def __init__(self, settings: LabelSummarySettings) -> None:
        self.folder = settings.folder

    async def handle(self, result: BatchResult) -> None:
        if result.batch.endpoint != "/v1/classify":
            return
        # File I/O off the event loop: the server answers other requests meanwhile.
        await asyncio.to_thread(self._write, result)

    def _write(self, result: BatchResult) -> None:
        # The output file holds the lines that succeeded, the error file the ones that did not.
        labels: Counter[str] = Counter()
        lines = items = 0
        for line in output_lines(result.output_path):
            lines += 1
            body = line.response.body if line.response else {}
            for item in body.get("results", []):
                items += 1
                # Items that asked only for other capabilities carry no label.
                if item.get("label") is not None:
                    labels[item["label"]] += 1
        failed = sum(1 for _ in output_lines(result.error_path))
        summary = {
            "batch_id": result.batch.id,
            "status": result.batch.status,
            "succeeded_lines": lines,
            "failed_lines": failed,
            "items": items,
            "labels": dict(labels.most_common()),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{result.batch.id}.labels.json"
        # Written aside and renamed: a reader never sees half a summary.
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        os.replace(temporary, target)
