"""Locust load test for `POST /v1/classify`, on Banking77's held-out texts.

One user class, `ClassifyUser`, with three weighted tasks, each under its own name in the stats:

  /v1/classify single     (weight 8) one text, classification only
  /v1/classify batch=16   (weight 1) CAPSERVE_BATCH_SIZE distinct texts in one request
  /v1/classify mixed      (weight 2) CAPSERVE_MIXED_ITEMS items, each classification plus a
                                     random subset of recommendations/alerts

and one load shape, chosen by CAPSERVE_PROFILE (see `loadtests/profiles.py` for the arithmetic):

  steady  ramp to CAPSERVE_USERS over 10 s, then hold
  burst   CAPSERVE_USERS/8, with bursts to CAPSERVE_USERS for 10 s every 30 s
  wave    a sinusoid between CAPSERVE_USERS/8 and CAPSERVE_USERS, period 60 s

Every profile stops the run after CAPSERVE_DURATION_S. Users are closed-loop (no think time,
maximum pressure) unless CAPSERVE_WAIT_S sets one. A non-2xx answer, or a 2xx answer without one
result per text, counts as a failure whose message carries the server's JSON error message.

Against a local `make run` (from the repository root):

    CAPSERVE_PROFILE=steady .venv/bin/locust -f loadtests/locustfile.py --headless \\
        --host http://127.0.0.1:8000 --csv results/locust-steady --csv-full-history
    CAPSERVE_PROFILE=burst CAPSERVE_USERS=64 CAPSERVE_DURATION_S=300 .venv/bin/locust \\
        -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000 \\
        --csv results/locust-burst
    CAPSERVE_PROFILE=wave .venv/bin/locust -f loadtests/locustfile.py --headless \\
        --host http://127.0.0.1:8000 --csv results/locust-wave --csv-full-history

Against a remote deployment (a bearer token is sent when CAPSERVE_API_KEY is set):

    CAPSERVE_PROFILE=steady CAPSERVE_API_KEY=... .venv/bin/locust -f loadtests/locustfile.py \\
        --headless --host https://capserve.example.com --csv results/remote-steady

Leave out --users/--spawn-rate/--run-time: the shape sets them. Drop --headless for the web UI
on http://localhost:8089.

Environment (defaults in brackets): CAPSERVE_PROFILE [steady], CAPSERVE_USERS [32],
CAPSERVE_DURATION_S [120], CAPSERVE_BATCH_SIZE [16], CAPSERVE_MIXED_ITEMS [4],
CAPSERVE_WAIT_S [0], CAPSERVE_API_KEY [none], CAPSERVE_RAMP_S [10], CAPSERVE_BURST_EVERY_S [30],
CAPSERVE_BURST_S [10], CAPSERVE_WAVE_PERIOD_S [60].
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

# Locust imports this file by path, not as a package: the project's packages sit beside it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import HttpUser, LoadTestShape, constant, task

from loadtests.profiles import (
    LoadSettings,
    batch_body,
    failure_message,
    load_texts,
    mixed_body,
    single_body,
    spawn_rate,
)

SETTINGS = LoadSettings.from_env()
TEXTS = load_texts(Path(__file__).resolve().parents[1] / "data" / "banking77" / "heldout.csv")


class ClassifyUser(HttpUser):
    wait_time = constant(SETTINGS.wait_s)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.client.headers.update(SETTINGS.headers())

    def _classify(self, name: str, body: dict[str, Any], expected_results: int) -> None:
        with self.client.post(
            "/v1/classify", json=body, name=name, catch_response=True
        ) as response:
            if response.status_code == 0:  # no answer at all: refused, reset, timed out
                response.failure(f"connection error: {response.error!r}")
                return
            problem = failure_message(response.status_code, response.text, expected_results)
            if problem is None:
                response.success()
            else:
                response.failure(problem)

    @task(8)
    def single(self) -> None:
        self._classify("/v1/classify single", single_body(TEXTS, self.rng), 1)

    @task(1)
    def batch(self) -> None:
        n = SETTINGS.batch_size
        self._classify(f"/v1/classify batch={n}", batch_body(TEXTS, self.rng, n), n)

    @task(2)
    def mixed(self) -> None:
        n = SETTINGS.mixed_items
        self._classify("/v1/classify mixed", mixed_body(TEXTS, self.rng, n), n)


def _shape_for(settings: LoadSettings) -> type[LoadTestShape]:
    """The one shape locust runs. Built here rather than as three module-level classes because
    locust runs whichever LoadTestShape subclass it finds in the module."""

    class Shape(LoadTestShape):
        profile = settings.profile

        def tick(self) -> tuple[int, float] | None:
            users = settings.users_at(self.get_run_time())
            return None if users is None else (users, spawn_rate(settings.users))

    Shape.__name__ = Shape.__qualname__ = f"{settings.profile.capitalize()}Shape"
    return Shape


CapserveShape = _shape_for(SETTINGS)
