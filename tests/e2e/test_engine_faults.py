"""An engine replica killed under load: every request ends, as a 200 or a clean JSON 503 with
Retry-After, and the app recovers by itself once Serve has replaced the replica.

This kills a replica of the shared session app, so it waits until the app answers again before
it ends; later tests see a healthy app.
"""

import os
import signal
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.api_keys import ADMIN_KEY, bearer

pytestmark = pytest.mark.e2e

# Serve names a replica actor `SERVE_REPLICA::<app>#<deployment>#<id>` in namespace "serve".
ENGINE_REPLICA_PREFIX = "SERVE_REPLICA::capserve#engine-minilm#"
SEND_INTERVAL_S = 0.25
MAX_IN_FLIGHT = 256
LOAD_BEFORE_KILL_S = 3.0
LOAD_AFTER_KILL_S = 30.0
# What counts as a fast answer in the printed figures (no assertion rests on it).
FAST_S = 2.0
# Longer than the longest call timeout (a runner call, 120 s): a request still open then hangs.
REQUEST_TIMEOUT_S = 150.0
RECOVERY_TIMEOUT_S = 240.0
HEALTHY_IN_A_ROW = 5


@dataclass(frozen=True)
class Outcome:
    sent_at: float
    seconds: float
    status: int
    retry_after: str | None
    body: str


def engine_replica_pid() -> int:
    """The engine replica's process, asked of the replica actor itself (the session's Ray runs
    without the dashboard that Ray's state API needs)."""
    import ray

    names = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "serve" and actor["name"].startswith(ENGINE_REPLICA_PREFIX)
    ]
    assert len(names) == 1, names
    replica = ray.get_actor(names[0], namespace="serve")
    return ray.get(replica.__ray_call__.remote(lambda _: os.getpid()), timeout=30)


def children_of(pid: int) -> list[int]:
    """Processes the replica started (vLLM's engine core), which must not outlive it."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command in field 2 may hold spaces; the parent's pid is 2 fields after it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def classify(http: httpx.Client) -> Outcome:
    # A new text each time, so the result cache never answers and every request needs the engine.
    text = f"my new card has still not arrived {uuid.uuid4().hex}"
    started = time.monotonic()
    response = http.post("/v1/classify", json={"texts": [text]})
    return Outcome(
        sent_at=started,
        seconds=time.monotonic() - started,
        status=response.status_code,
        retry_after=response.headers.get("retry-after"),
        body=response.text,
    )


def assert_clean(outcome: Outcome) -> None:
    """A 200, or a 5xx whose JSON error body says what happened, never a stack trace."""
    if outcome.status == 200:
        return
    assert outcome.status >= 500, outcome
    assert "Traceback" not in outcome.body, outcome
    error = httpx.Response(outcome.status, content=outcome.body).json()["error"]
    assert error["message"] and error["type"] == "server_error", outcome
    if outcome.status == 503:
        assert error["code"] == "service_unavailable", outcome
        assert outcome.retry_after is not None and int(outcome.retry_after) >= 1, outcome


def wait_until_healthy(http: httpx.Client, deadline: float) -> None:
    """/readyz answers, then classify answers 200 several times in a row."""
    while http.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the app did not become ready again"
        time.sleep(2)
    in_a_row = 0
    while in_a_row < HEALTHY_IN_A_ROW:
        assert time.monotonic() < deadline, "classify did not recover"
        outcome = classify(http)
        assert_clean(outcome)
        in_a_row = in_a_row + 1 if outcome.status == 200 else 0
        if outcome.status != 200:
            time.sleep(1)


def send_at_rate(http: httpx.Client, seconds: float, pool: ThreadPoolExecutor) -> list[Future]:
    """Open-loop load: a request every SEND_INTERVAL_S however long answers take, as clients
    keep arriving while the engine is down."""
    sent = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sent.append(pool.submit(classify, http))
        time.sleep(SEND_INTERVAL_S)
    return sent


def summary(outcomes: list[Outcome], killed_at: float, recovered_s: float) -> str:
    after = [o for o in outcomes if o.sent_at + o.seconds >= killed_at]
    failed = [o for o in after if o.status != 200]
    first_fast = min(
        (o.sent_at - killed_at for o in failed if o.seconds < FAST_S), default=float("nan")
    )
    return (
        f"\nengine replica killed under {1 / SEND_INTERVAL_S:g} classify requests/s: "
        f"{len(outcomes)} requests, statuses {dict(Counter(o.status for o in outcomes))}; "
        f"{len(after)} ended after the kill, {len(failed)} of them failed "
        f"({sum(o.seconds < FAST_S for o in failed)} within {FAST_S:g} s; the first such was "
        f"sent {first_fast:.1f} s after the kill); slowest failure "
        f"{max((o.seconds for o in failed), default=0):.1f} s, slowest success "
        f"{max((o.seconds for o in after if o.status == 200), default=0):.1f} s; all 200 again "
        f"{recovered_s:.0f} s after the kill; a failure: "
        f"{failed[0].status if failed else None} {failed[0].body if failed else None}"
    )


def test_killing_the_engine_under_load_fails_fast_and_recovers(base_url):
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT)
    with (
        httpx.Client(
            base_url=base_url, timeout=REQUEST_TIMEOUT_S, headers=bearer(ADMIN_KEY), limits=limits
        ) as http,
        ThreadPoolExecutor(MAX_IN_FLIGHT) as pool,
    ):
        wait_until_healthy(http, time.monotonic() + RECOVERY_TIMEOUT_S)
        victim = engine_replica_pid()
        victim_children = children_of(victim)

        sent = send_at_rate(http, LOAD_BEFORE_KILL_S, pool)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        sent += send_at_rate(http, LOAD_AFTER_KILL_S, pool)
        # Every request ends: a request still open after REQUEST_TIMEOUT_S raises here.
        outcomes = [future.result() for future in sent]

        wait_until_healthy(http, killed_at + RECOVERY_TIMEOUT_S)
        recovered_s = time.monotonic() - killed_at
        replacement = engine_replica_pid()

    print(summary(outcomes, killed_at, recovered_s))
    for outcome in outcomes:
        assert_clean(outcome)
    assert replacement != victim
    # vLLM's engine-core process of the killed replica must not linger beside the new one.
    assert not [pid for pid in victim_children if alive(pid)]
