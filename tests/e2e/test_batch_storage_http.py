"""Storage and exactly-once edges on the running app: what deleting a batch's output removes from
disk, output expiry as the batch asked, and alert webhook events that name their request and
item under ids a receiver de-duplicates by."""

import json
import time
import uuid
from pathlib import Path

import openai
import pytest
import yaml

from capabilities.webhooks import verify
from loadtests.batch_bench import job_file
from tests.e2e.conftest import ALERTS_SECRET_ENV, ALERTS_WEBHOOK_SECRET
from tests.e2e.test_batch_http import TERMINAL, sdk, wait_until  # noqa: F401 - fixture
from tests.http_receiver import HttpReceiver

pytestmark = pytest.mark.e2e
SHIPPED_RULES = Path(__file__).resolve().parents[2] / "data" / "banking77" / "alert_rules.yaml"


def test_a_batchs_output_expires_as_asked_and_delete_removes_its_bytes(
    sdk: openai.OpenAI,  # noqa: F811 - the fixture
    serve_cluster,
) -> None:
    upload = sdk.files.create(file=job_file(["Where is my card?"] * 12, "s"), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/classify",  # type: ignore[arg-type]
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    done = wait_until(sdk, batch.id, lambda b: b.status in TERMINAL)
    assert done.status == "completed", done
    output = sdk.files.retrieve(done.output_file_id)
    assert output.expires_at == output.created_at + 7200

    batch_dir = Path(serve_cluster.config["applications"][0]["args"]["batch"]["dir"])
    folder = batch_dir / "batches" / batch.id
    # Every chunk file went when the batch ended; the assembled output stays until deleted.
    assert sorted(path.name for path in folder.iterdir()) == ["output.jsonl"]

    assert sdk.files.delete(done.output_file_id).deleted
    assert not folder.exists(), "the output's bytes and its emptied batch folder are gone"
    assert done.output_file_id not in [file.id for file in sdk.files.list()]
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(done.output_file_id)


def alerts_with_webhook(config: dict, receiver_url: str) -> dict:
    changed = yaml.safe_load(yaml.safe_dump(config))
    settings = {
        "rules_path": str(SHIPPED_RULES),
        "sinks": [{"type": "webhook", "url": receiver_url, "secret_env": ALERTS_SECRET_ENV}],
    }
    changed["applications"][0]["deployments"] = [
        {"name": name, "user_config": {"alerts": settings}} for name in ("Ingress", "batch-runner")
    ]
    return changed


def test_alert_events_name_their_request_and_item_under_stable_ids(
    client,
    sdk: openai.OpenAI,  # noqa: F811 - the fixture
    serve_cluster,
) -> None:
    text = "Someone stole my card and I need to block it"
    ask = {
        "items": [{"id": "ticket-1", "text": text}, {"text": text}],
        "capabilities": ["alerts"],
    }
    probe = {"texts": ["hi"], "capabilities": ["alerts"]}

    def alerts_version() -> str:
        return client.post("/v1/classify", json=probe).json()["capability_versions"]["alerts"]

    original = serve_cluster.config
    before = alerts_version()
    with HttpReceiver() as receiver:
        serve_cluster.deploy(alerts_with_webhook(original, receiver.url))
        try:
            serve_cluster.wait_running()
            deadline = time.monotonic() + 60
            while True:
                if alerts_version() != before:
                    break
                assert time.monotonic() < deadline, "the webhook sink never took effect"
                time.sleep(0.5)

            # The same request twice (a client retrying with its X-Request-ID): the same events.
            request_id = f"trace-alerts-{uuid.uuid4().hex[:8]}"
            for _ in range(2):
                answer = client.post("/v1/classify", json=ask, headers={"X-Request-ID": request_id})
                assert answer.status_code == 200 and answer.json()["id"] == request_id
            fired = len(answer.json()["results"][0]["alerts"])
            assert fired >= 1

            def events_of_the_request() -> list[dict]:
                # The probes above may fire alerts of their own, under their own request ids.
                events = [json.loads(request.body) for request in receiver.requests]
                return [event for event in events if event["data"]["request_id"] == request_id]

            deadline = time.monotonic() + 30
            while len(events_of_the_request()) < 2 * 2 * fired:
                assert time.monotonic() < deadline, f"{events_of_the_request()} arrived"
                time.sleep(0.2)

            # A batch line's alerts name the batch and the line's custom_id.
            line = {"items": [{"id": "ticket-2", "text": text}], "capabilities": ["alerts"]}
            record = {"custom_id": "row-1", "method": "POST", "url": "/v1/classify", "body": line}
            upload = sdk.files.create(file=json.dumps(record).encode() + b"\n", purpose="batch")
            batch = sdk.batches.create(
                input_file_id=upload.id,
                endpoint="/v1/classify",  # type: ignore[arg-type]
                completion_window="24h",
            )
            assert wait_until(sdk, batch.id, lambda b: b.status in TERMINAL).status == "completed"
            deadline = time.monotonic() + 30
            while True:
                bodies = [json.loads(request.body) for request in receiver.requests]
                of_batch = [e for e in bodies if e["data"].get("batch_id") == batch.id]
                if len(of_batch) == fired:
                    break
                assert time.monotonic() < deadline, f"{of_batch} arrived for the batch"
                time.sleep(0.2)
            assert {(e["data"]["custom_id"], e["data"]["item_id"]) for e in of_batch} == {
                ("row-1", "ticket-2")
            }
        finally:
            serve_cluster.deploy(original)
            serve_cluster.wait_running()

        for request in receiver.requests:
            signature = request.headers["x-capserve-signature"]
            assert verify(ALERTS_WEBHOOK_SECRET, signature, request.body)
            assert request.headers["x-capserve-event-id"] == json.loads(request.body)["id"]
        events = events_of_the_request()
    assert {event["type"] for event in events} == {"alerts.fired"}
    items = sorted({(e["data"]["item_index"], e["data"]["item_id"]) for e in events})
    assert items == [(0, "ticket-1"), (1, None)]
    assert {e["data"]["batch_id"] for e in events} == {None}
    ids = [event["id"] for event in events]
    # One id per item and rule, each delivered once per send.
    assert len(ids) == 2 * 2 * fired
    assert len(set(ids)) == 2 * fired and all(ids.count(i) == 2 for i in ids)
