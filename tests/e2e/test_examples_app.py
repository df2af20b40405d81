"""examples/serve_config.yaml run as the README's "Extending capserve" has it (`make run`'s recipe
on that config, its own Ray): the label set file's labels, the custom capability's decisions
with the real MiniLM, and the example result handler's summary of a batch made with the
`openai` SDK."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from loadtests.batch_bench import job_file
from tests.e2e.test_make_run_metrics import MadeRun, made_run_of
from tests.unit.test_extension_examples import CALM, FURIOUS, PASSWORD, SUSPICIOUS

pytestmark = pytest.mark.e2e
SUMMARY_WAIT_S = 120


@pytest.fixture(scope="module")
def example_run(
    project_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[MadeRun, Path]]:
    workdir = tmp_path_factory.mktemp("examples-app")
    config = yaml.safe_load((project_root / "examples" / "serve_config.yaml").read_text())
    args = config["applications"][0]["args"]
    args["cache_dir"] = str(workdir / "cache")
    summaries = workdir / "summaries"
    [handler] = args["batch"]["result_handlers"]
    handler["settings"]["folder"] = str(summaries)
    with made_run_of(project_root, workdir, config) as run:
        yield run, summaries


def test_the_example_app_classifies_and_escalates_with_the_real_model(example_run) -> None:
    run, _ = example_run
    body = {"texts": [SUSPICIOUS, FURIOUS, CALM], "capabilities": ["classification", "escalation"]}
    response = httpx.post(f"{run.base_url}/v1/classify", json=body, timeout=60)
    assert response.status_code == 200, response.text
    print(json.dumps(response.json(), indent=2))  # the README's example answer

    results = response.json()["results"]
    assert [r["label"] for r in results] == ["security_incident", "vpn_access", "vpn_access"]
    decisions = [(r["escalation"]["escalate"], r["escalation"]["reason"]) for r in results]
    assert decisions == [(True, "label"), (True, "tone"), (False, None)]


def test_the_example_result_handler_summarises_a_batch(example_run) -> None:
    run, summaries = example_run
    sdk = openai.OpenAI(base_url=f"{run.base_url}/v1", api_key="-", max_retries=0)
    upload = sdk.files.create(file=job_file([PASSWORD, SUSPICIOUS, PASSWORD]), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/classify",  # type: ignore[arg-type]
        completion_window="24h",
    )
    summary = summaries / f"{batch.id}.labels.json"
    deadline = time.monotonic() + SUMMARY_WAIT_S
    while not summary.exists():
        assert time.monotonic() < deadline, sdk.batches.retrieve(batch.id)
        time.sleep(0.5)

    assert json.loads(summary.read_text())["labels"] == {
        "password_reset": 2,
        "security_incident": 1,
    }
