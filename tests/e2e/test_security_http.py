"""API keys, scopes, per-key isolation of files and batches, per-key rate limits, what the public
and any-key routes disclose, and caller-chosen webhook URLs, against the running default app
(which admits the keys of tests/e2e/api_keys.py)."""

import time

import httpx
import openai
import pytest

from deployments.http.readiness import READY_CACHE_S
from loadtests.batch_bench import job_file
from tests.e2e.api_keys import (
    CLASSIFY_KEY,
    LIMITED_KEY,
    LIMITED_REQUESTS,
    TEAM_A_KEY,
    TEAM_B_KEY,
    bearer,
)
from tests.e2e.conftest import ALERTS_WEBHOOK_TOKEN

pytestmark = pytest.mark.e2e
TEXTS = ["I still have not received my new card", "Why was I charged a fee?"]


def sdk(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_checks_need_no_key(base_url: str, path: str) -> None:
    assert httpx.get(f"{base_url}{path}", timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/classify"), ("GET", "/v1/models"), ("GET", "/v1/files"), ("GET", "/v1/stats")],
)
@pytest.mark.parametrize("headers", [{}, bearer("sk-wrong"), {"Authorization": "Basic eA=="}])
def test_every_other_endpoint_needs_a_valid_key(base_url, method, path, headers) -> None:
    response = httpx.request(
        method, f"{base_url}{path}", headers=headers, json={"texts": TEXTS}, timeout=30
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert error_of(response)["code"] == "invalid_api_key"
    message = error_of(response)["message"]
    assert "Authorization: Bearer" in message or "not valid" in message


def test_a_key_works_where_it_has_the_scope_and_is_403_elsewhere(base_url: str) -> None:
    headers = bearer(CLASSIFY_KEY)
    classified = httpx.post(
        f"{base_url}/v1/classify", headers=headers, json={"texts": TEXTS}, timeout=60
    )
    assert classified.status_code == 200
    for path in ("/v1/stats", "/v1/files", "/v1/batches"):
        response = httpx.get(f"{base_url}{path}", headers=headers, timeout=30)
        assert response.status_code == 403, path
        assert error_of(response)["code"] == "insufficient_scope"
    # What the openai SDK makes of it.
    with pytest.raises(openai.PermissionDeniedError):
        sdk(base_url, CLASSIFY_KEY).files.list()
    with pytest.raises(openai.AuthenticationError):
        sdk(base_url, "sk-wrong").models.list()


def test_files_and_batches_are_visible_only_to_the_key_that_made_them(base_url: str) -> None:
    team_a, team_b = sdk(base_url, TEAM_A_KEY), sdk(base_url, TEAM_B_KEY)
    upload = team_a.files.create(file=job_file(TEXTS, "iso"), purpose="batch")
    batch = team_a.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/classify",  # type: ignore[arg-type]
        completion_window="24h",
    )

    for attempt in (
        lambda: team_b.files.retrieve(upload.id),
        lambda: team_b.files.content(upload.id),
        lambda: team_b.files.delete(upload.id),
        lambda: team_b.batches.retrieve(batch.id),
        lambda: team_b.batches.cancel(batch.id),
        lambda: team_b.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/classify",  # type: ignore[arg-type]
            completion_window="24h",
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert upload.id not in [f.id for f in team_b.files.list()]
    assert batch.id not in [b.id for b in team_b.batches.list()]

    deadline = time.monotonic() + 300
    while (done := team_a.batches.retrieve(batch.id)).status != "completed":
        assert done.status not in {"failed", "expired", "cancelled"}, done
        assert time.monotonic() < deadline, done
        time.sleep(0.3)
    # The output belongs to the input's owner.
    assert len(team_a.files.content(done.output_file_id).content.splitlines()) == len(TEXTS)
    with pytest.raises(openai.NotFoundError):
        team_b.files.retrieve(done.output_file_id)
    assert batch.id in [b.id for b in team_a.batches.list()]


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(base_url: str) -> None:
    headers = bearer(LIMITED_KEY)
    statuses = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
        for _ in range(LIMITED_REQUESTS["burst"] + 2):
            response = http.get("/v1/models")
            statuses.append(response.status_code)
            if response.status_code == 429:
                limited = response
    assert statuses.count(200) <= LIMITED_REQUESTS["burst"] and 429 in statuses, statuses
    assert int(limited.headers["retry-after"]) >= 1
    assert error_of(limited)["code"] == "rate_limit_exceeded"
    # Other keys are not slowed by it.
    assert (
        httpx.get(f"{base_url}/v1/models", headers=bearer(CLASSIFY_KEY), timeout=30).status_code
        == 200
    )


def test_readyz_reuses_its_answer_for_a_moment(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        first = http.get("/readyz").json()
        again = http.get("/readyz").json()
        assert again["checked_at"] == first["checked_at"]
        time.sleep(READY_CACHE_S + 0.5)
        later = http.get("/readyz").json()
    assert later["checked_at"] > first["checked_at"]
    assert later["engines"] == ["minilm"]


def test_capabilities_show_alert_webhook_urls_without_their_tokens(
    base_url: str, alerts_receiver
) -> None:
    response = httpx.get(f"{base_url}/v1/capabilities", headers=bearer(CLASSIFY_KEY), timeout=30)
    assert response.status_code == 200
    assert ALERTS_WEBHOOK_TOKEN not in response.text
    cards = {card["id"]: card for card in response.json()["data"]}
    [sink] = [s for s in cards["alerts"]["settings"]["sinks"] if s["type"] == "webhook"]
    origin = alerts_receiver.url.removesuffix("/hook")
    assert sink["url"] == f"{origin}/[redacted]"


def test_a_batch_naming_its_own_webhook_url_is_refused_while_caller_urls_are_off(
    base_url: str,
) -> None:
    team_a = sdk(base_url, TEAM_A_KEY)
    upload = team_a.files.create(file=job_file(TEXTS, "hook"), purpose="batch")
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        team_a.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/classify",  # type: ignore[arg-type]
            completion_window="24h",
            metadata={"webhook_url": "http://169.254.169.254/latest/meta-data/"},
        )
    error = raised.value.response.json()["error"]
    assert error["param"] == "metadata"
    assert "sends batch events only to its own receiver" in error["message"]
