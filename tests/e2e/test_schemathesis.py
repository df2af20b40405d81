"""Schemathesis against the running default app, driven by the app's own `/openapi.json`: every
operation gets generated valid and invalid requests, and every answer must be no 5xx, a documented
status and match its documented schema. Also hostile bodies the generator does not make."""

from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.api_keys import ADMIN_KEY, bearer

pytestmark = pytest.mark.e2e

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Bounded so the whole run stays within a few minutes on two slow cores; derandomized so a
# failure reproduces. Shrinking is off: it would re-send a failing request many times.
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=list(HealthCheck),
)


def modes_of(operation: Any) -> list[GenerationMode]:
    """Negative cases need something to break: parameters or a body."""
    if {"parameters", "requestBody"} & set(operation.definition.raw):
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def fuzz(
    operation: Any, mode: GenerationMode, session: requests.Session, statuses: Counter[int]
) -> None:
    @settings(FUZZ, max_examples=EXAMPLES[mode])
    @given(case=operation.as_strategy(mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(
            session=session, headers=bearer(ADMIN_KEY), checks=CHECKS, timeout=60
        )
        statuses[response.status_code] += 1

    run()


def test_every_operation_answers_as_documented(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=60)
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = {
        f"{method.upper()} {path}"
        for path, item in schema.raw_schema["paths"].items()
        for method in item
    }
    # Schemathesis leaves out the document it was loaded from.
    assert {operation.label for operation in operations} == documented - {"GET /openapi.json"}
    statuses: Counter[int] = Counter()
    failures = []
    with requests.Session() as session:
        for operation in operations:
            for mode in modes_of(operation):
                try:
                    fuzz(operation, mode, session, statuses)
                except Exception as error:  # noqa: BLE001 - every operation runs; all are reported
                    failures.append(f"{operation.label} ({mode.value}): {error}")
    # The counts show in `pytest -s` and in a failure: how much was tried, and what came back.
    by_status = dict(sorted(statuses.items()))
    print(f"schemathesis: {sum(statuses.values())} requests, statuses {by_status}")
    assert not failures, "\n\n".join(failures)
    assert statuses[200] > 0 and sum(statuses.values()) > 20 * len(operations)


def test_the_generative_app_documents_its_own_prefix(client) -> None:
    response = client.get("/generative/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["servers"] == [{"url": "/generative"}]
    assert "/v1/chat/completions" in document["paths"]


@pytest.mark.parametrize(
    "body", [b"[" * 100_000 + b"]" * 100_000, b'{"texts": ' * 50 + b'"x"' + b"}" * 50]
)
def test_deeply_nested_bodies_are_a_400_naming_the_limit(client, body: bytes) -> None:
    response = client.post("/v1/classify", content=body)
    assert response.status_code == 400, response.text
    assert "deeper than the limit of 32 levels" in response.json()["error"]["message"]


def test_integers_past_the_digit_limit_are_a_400(client) -> None:
    response = client.post("/v1/embeddings", content=b'{"input": ' + b"9" * 5000 + b"}")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"
