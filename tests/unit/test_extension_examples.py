"""The extension points' examples, run as the README's "Extending capserve" points to them: the
app of `examples/serve_config.yaml` (a label set file, a capability of its own, a result handler)
built in this process over the fake engine, through every deployment class it binds, answering
HTTP and the `openai` SDK's batch calls as the deployed app does."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from deployments.app import check_config
from deployments.config import AppConfig
from loadtests.batch_bench import job_file
from tests.fakes import FakeEngine
from tests.local_serve import LocalApp, local_apps, serve_replicas  # noqa: F401

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_APP = yaml.safe_load((EXAMPLES / "serve_config.yaml").read_text())["applications"][0]
THRESHOLD = next(c for c in EXAMPLE_APP["args"]["capabilities"] if c["name"] == "escalation")[
    "settings"
]["threshold"]
FURIOUS = "This is the third time I ask and nobody helps, the VPN drops again, I am furious"
SUSPICIOUS = "I clicked a link in a suspicious email that asked for my login"
PASSWORD = "My password expired and I cannot log in"
CALM = "Could you set up the VPN client on my new laptop?"


def example_args(project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """examples/serve_config.yaml's app args, its folders moved under `tmp_path`."""
    # Its paths are relative to where `serve run` starts: the project root.
    monkeypatch.chdir(project_root)
    args = copy.deepcopy(EXAMPLE_APP["args"])
    args["cache_dir"] = str(tmp_path / "cache")
    [handler] = args["batch"]["result_handlers"]
    handler["settings"]["folder"] = str(tmp_path / "summaries")
    return args


@pytest.fixture
def app_of(project_root, tmp_path, monkeypatch, local_apps) -> Any:  # noqa: F811
    """Builds the example app (after `change` to its args), as `build_app` checks and binds it,
    its engine serving the fake engine."""

    async def build(change: Any = None, engine: FakeEngine | None = None) -> LocalApp:
        args = example_args(project_root, tmp_path, monkeypatch)
        if change is not None:
            change(args)
        config: AppConfig = check_config(args)
        return await local_apps(config, {"minilm": engine or FakeEngine("minilm")})

    return build


async def classify(app: LocalApp, texts: list[str], capabilities: list[str]) -> list[dict]:
    async with app.http() as http:
        response = await http.post(
            "/v1/classify", json={"texts": texts, "capabilities": capabilities}
        )
    assert response.status_code == 200, response.text
    return response.json()["results"]


async def test_the_label_set_file_is_what_classification_answers_with(app_of):
    app = await app_of()

    [result] = await classify(app, [PASSWORD], ["classification"])

    assert result["label"] == "password_reset"
    labels = {
        line.split(",")[-1] for line in (EXAMPLES / "helpdesk_labels.csv").read_text().split()
    }
    assert {entry["label"] for entry in result["top_k"]} <= labels


def deployed(capability: str) -> Any:
    def change(args: dict) -> None:
        entry = next(c for c in args["capabilities"] if c["name"] == capability)
        entry["placement"] = "deployment"

    return change


@pytest.mark.parametrize("placement", ["inline", "deployment"])
async def test_the_custom_capability_escalates_by_label_and_by_tone(app_of, placement):
    app = await app_of(deployed("escalation") if placement == "deployment" else None)

    results = await classify(app, [SUSPICIOUS, FURIOUS, CALM], ["classification", "escalation"])

    assert [r["label"] for r in results] == ["security_incident", "vpn_access", "vpn_access"]
    decisions = [r["escalation"] for r in results]
    assert [(d["escalate"], d["reason"]) for d in decisions] == [
        (True, "label"),
        (True, "tone"),
        (False, None),
    ]
    assert decisions[1]["tone"] >= THRESHOLD > decisions[2]["tone"]
    assert set(app.runners) == ({"escalation"} if placement == "deployment" else set())


async def test_the_custom_capability_is_described_with_its_dependency(app_of):
    app = await app_of()
    async with app.http() as http:
        listing = (await http.get("/v1/capabilities")).json()
    escalation = next(card for card in listing["data"] if card["id"] == "escalation")
    assert escalation["depends_on"] == ["classification"]
    assert escalation["settings"]["always_escalate"] == ["security_incident"]
    assert listing["levels"] == [["classification"], ["escalation"]]


async def test_the_result_handler_summarises_a_finished_batch(app_of, tmp_path):
    app = await app_of()
    texts = [PASSWORD, SUSPICIOUS, PASSWORD, "The laptop battery drains in under an hour"]
    async with app.http() as http:
        sdk = openai.AsyncOpenAI(base_url="http://app/v1", api_key="-", http_client=http)
        upload = await sdk.files.create(file=job_file(texts), purpose="batch")
        batch = await sdk.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/classify",  # type: ignore[arg-type]
            completion_window="24h",
        )
        summary = tmp_path / "summaries" / f"{batch.id}.labels.json"
        async with asyncio.timeout(30):
            while not summary.exists():
                await asyncio.sleep(0.05)
        assert (await sdk.batches.retrieve(batch.id)).status == "completed"

    assert json.loads(summary.read_text()) == {
        "batch_id": batch.id,
        "status": "completed",
        "succeeded_lines": 4,
        "failed_lines": 0,
        "items": 4,
        "labels": {"password_reset": 2, "security_incident": 1, "laptop_hardware": 1},
    }


def test_the_readme_points_at_each_example(project_root):
    readme = (project_root / "README.md").read_text()
    section = re.search(r"^## Extending capserve\n(.*?)^## ", readme, re.DOTALL | re.MULTILINE)
    assert section is not None, "README.md has no '## Extending capserve' section"
    examples = sorted(
        path.name for path in EXAMPLES.iterdir() if path.is_file() and path.name != "__init__.py"
    )
    assert [name for name in examples if f"examples/{name}" not in section[1]] == []
