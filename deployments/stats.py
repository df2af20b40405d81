"""Run counters of every capability runner replica, gathered in one place for /v1/stats."""

from __future__ import annotations

import time

from pydantic import BaseModel, computed_field
from ray import serve

from capabilities.batching import BatchReport


class CapabilityStats(BaseModel):
    """Totals since start: a run is one `Capability.run`; a call is one request's share of a batch."""

    runs: int = 0
    batches: int = 0
    calls: int = 0
    texts: int = 0
    unique_texts: int = 0
    cache_hits: int = 0

    @computed_field
    @property
    def mean_batch_size(self) -> float:
        """Texts per batch: how well concurrent requests coalesce."""
        return round(self.texts / self.batches, 3) if self.batches else 0.0

    @computed_field
    @property
    def mean_calls_per_batch(self) -> float:
        """Requests' calls per batch."""
        return round(self.calls / self.batches, 3) if self.batches else 0.0

    @computed_field
    @property
    def cache_hit_rate(self) -> float:
        """Share of distinct inputs answered by the result cache instead of a run."""
        return round(self.cache_hits / self.unique_texts, 3) if self.unique_texts else 0.0

    def add(self, report: BatchReport) -> None:
        self.runs += report.runs
        self.batches += 1
        self.calls += report.calls
        self.texts += report.texts
        self.unique_texts += report.unique_texts
        self.cache_hits += report.cache_hits


class StatsSnapshot(BaseModel):
    object: str = "stats"
    since: int
    capabilities: dict[str, CapabilityStats]


@serve.deployment(
    name="stats", num_replicas=1, max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0}
)
class StatsRecorder:
    """One replica on purpose: it must see the batches of every runner replica. Methods are async
    so they run on the replica's event loop, one at a time, with no locking."""

    def __init__(self) -> None:
        self._since = int(time.time())
        self._stats: dict[str, CapabilityStats] = {}

    async def record(self, capability: str, report: BatchReport) -> None:
        self._stats.setdefault(capability, CapabilityStats()).add(report)

    async def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(
            since=self._since,
            capabilities={
                name: {
                    **stats.model_dump(),
                    "mean_batch_size": round(stats.mean_batch_size, 3),
                    "mean_calls_per_batch": round(stats.calls / stats.batches, 3)
                    if stats.batches
                    else 0.0,
                }
                for name, stats in sorted(self._stats.items())
            },
        )
