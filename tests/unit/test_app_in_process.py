"""The app's deployment classes wired in this process over the fake engine (tests/local_serve.py):
what the ingress, the classify service's coalescing, the capability hosts and the engine
deployment do together, request to engine and back, without Ray."""

from __future__ import annotations

import asyncio
from typing import Any

from capabilities.batching import BatchReport
from tests.local_serve import LocalApp, local_apps, serve_replicas  # noqa: F401
from tests.unit.test_engine_deployment import TOO_LONG, PickyEngine
from tests.unit.test_extension_examples import app_of  # noqa: F401

# Wide enough that requests sent together meet in one batch.
GATHER_S = 0.2


def gathering(args: dict[str, Any]) -> None:
    args["ingress"]["batching"] = {"max_batch_size": 64, "batch_wait_timeout_s": GATHER_S}


async def post_together(app: LocalApp, bodies: list[dict[str, Any]]) -> list[Any]:
    async with app.http() as http:
        return await asyncio.gather(*(http.post("/v1/classify", json=body) for body in bodies))


def batches(app: LocalApp) -> list[tuple[str, BatchReport]]:
    """The capability batches the replicas reported to the stats recorder, in order."""
    return [args for method, args in app.stats.sent if method == "record"]  # type: ignore[misc]


async def test_concurrent_requests_run_each_capability_once(app_of):  # noqa: F811
    app = await app_of(gathering)
    app.stats.sent.clear()  # loading reported nothing, but start from a clean slate anyway

    answers = await post_together(
        app,
        [
            {"texts": ["My laptop will not turn on"]},
            {"texts": ["The VPN drops"], "capabilities": ["classification", "escalation"]},
            {"texts": ["Outlook asks for my password"]},
        ],
    )

    assert [answer.status_code for answer in answers] == [200, 200, 200]
    # Three requests, four capability calls, two runs: one per capability.
    assert [(name, report.calls, report.runs) for name, report in batches(app)] == [
        ("classification", 3, 1),
        ("escalation", 1, 1),
    ]


async def test_a_text_the_engine_refuses_fails_its_request_alone(app_of):  # noqa: F811
    app = await app_of(gathering, engine=PickyEngine("minilm"))

    answers = await post_together(
        app, [{"texts": ["The VPN drops"]}, {"texts": [TOO_LONG]}, {"texts": ["I lost my laptop"]}]
    )

    assert [answer.status_code for answer in answers] == [200, 400, 200]
    error = answers[1].json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"] == "the prompt is longer than the model's context"
    assert [r["label"] for a in (answers[0], answers[2]) for r in a.json()["results"]] == [
        "vpn_access",
        "security_incident",
    ]
