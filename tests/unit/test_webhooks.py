import json
import logging
import socket
import time

import httpx
import pytest
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState

from capabilities.egress import PublicAddressTransport
from capabilities.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    Event,
    WebhookSecret,
    WebhookSender,
    sign,
    signature_header,
    verify,
)
from tests.http_receiver import HttpReceiver

SECRET = "whsec_test"


@pytest.fixture()
def receiver():
    with HttpReceiver() as server:
        yield server


def sender(url: str, **overrides) -> WebhookSender:
    return WebhookSender(url, SECRET, **({"backoff_s": 0.01, "timeout_s": 2.0} | overrides))


def event() -> Event:
    return Event(type="alerts.fired", data={"alerts": [{"rule": "r", "severity": "high"}]})


async def test_delivers_a_signed_json_event(receiver):
    sent = event()
    assert await sender(receiver.url).send(sent)
    [request] = receiver.requests
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers[EVENT_ID_HEADER.lower()] == sent.id
    assert verify(SECRET, request.headers[SIGNATURE_HEADER.lower()], request.body)
    assert not verify("another secret", request.headers[SIGNATURE_HEADER.lower()], request.body)
    assert Event.model_validate(json.loads(request.body)) == sent


def test_events_have_unique_prefixed_ids_and_a_creation_time():
    first, second = event(), event()
    assert first.id.startswith("evt_") and len(first.id) == 4 + 32
    assert first.id != second.id
    assert abs(first.created_at - time.time()) < 5


async def test_retries_after_503_with_the_same_event(receiver):
    receiver.fail_next(2)
    sent = event()
    assert await sender(receiver.url).send(sent)
    assert len(receiver.requests) == 3
    assert {r.headers[EVENT_ID_HEADER.lower()] for r in receiver.requests} == {sent.id}
    assert len({r.body for r in receiver.requests}) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502])
async def test_retries_timeouts_rate_limits_and_server_errors(receiver, status):
    receiver.fail_next(1, status)
    assert await sender(receiver.url).send(event())
    assert len(receiver.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 410])
async def test_other_client_errors_are_not_retried(receiver, status, caplog):
    receiver.fail_next(1, status)
    with caplog.at_level(logging.WARNING, logger="capserve.webhooks"):
        assert not await sender(receiver.url).send(event())
    assert len(receiver.requests) == 1
    assert f"HTTP {status}" in caplog.text


async def test_gives_up_after_max_attempts(receiver, caplog):
    receiver.fail_next(10)
    with caplog.at_level(logging.WARNING, logger="capserve.webhooks"):
        assert not await sender(receiver.url, max_attempts=3).send(event())
    assert len(receiver.requests) == 3
    assert "after 3 attempt(s): HTTP 503" in caplog.text


async def test_honours_retry_after_seconds(receiver):
    receiver.fail_next(1, 429, {"Retry-After": "0.3"})
    started = time.monotonic()
    assert await sender(receiver.url).send(event())
    assert time.monotonic() - started >= 0.3


async def test_retry_after_is_capped(receiver):
    receiver.fail_next(1, 503, {"Retry-After": "3600"})
    started = time.monotonic()
    assert await sender(receiver.url, max_backoff_s=0.05).send(event())
    assert time.monotonic() - started < 5


def after_attempt(number: int, response: httpx.Response) -> RetryCallState:
    state = RetryCallState(retry_object=AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = number
    state.set_result(response)
    return state


def test_backoff_doubles_per_attempt_up_to_the_cap():
    backoff = WebhookSender("http://127.0.0.1/hook", SECRET, backoff_s=0.5, max_backoff_s=3)
    unavailable = httpx.Response(503)
    delays = [backoff._delay_s(after_attempt(n, unavailable)) for n in range(1, 5)]
    assert delays == [0.5, 1, 2, 3]
    told = httpx.Response(503, headers={"Retry-After": "2.5"})
    assert backoff._delay_s(after_attempt(1, told)) == 2.5


async def test_connection_errors_are_retried_then_given_up_without_raising(caplog):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with caplog.at_level(logging.WARNING, logger="capserve.webhooks"):
        assert not await sender(f"http://127.0.0.1:{port}/hook", max_attempts=2).send(event())
    assert "after 2 attempt(s): ConnectError" in caplog.text
    assert "/hook" not in caplog.text


def test_verify_rejects_a_tampered_body():
    body = b'{"amount": 1}'
    header = signature_header(SECRET, int(time.time()), body)
    assert verify(SECRET, header, body)
    assert not verify(SECRET, header, b'{"amount": 100}')


def test_verify_rejects_old_and_far_future_timestamps():
    body = b"{}"
    now = 1_700_000_000
    old = signature_header(SECRET, now - 301, body)
    assert not verify(SECRET, old, body, now=now)
    assert verify(SECRET, old, body, tolerance_s=600, now=now)
    assert not verify(SECRET, signature_header(SECRET, now + 301, body), body, now=now)


@pytest.mark.parametrize("header", ["", "t=abc,v1=00", "v1=00", "t=1700000000", "garbage"])
def test_verify_rejects_malformed_headers(header):
    assert not verify(SECRET, header, b"{}", now=1_700_000_000)


@pytest.mark.parametrize("signature", ["é" * 64, "\u2028", "00\udcff"])
def test_verify_rejects_a_non_ascii_signature_instead_of_raising(signature):
    now = 1_700_000_000
    assert not verify(SECRET, f"t={now},v1={signature}", b"{}", now=now)


async def test_a_redirect_is_not_followed_and_fails_the_delivery(receiver, caplog):
    with HttpReceiver() as elsewhere:
        receiver.fail_next(1, 307, {"Location": elsewhere.url})
        with caplog.at_level(logging.WARNING, logger="capserve.webhooks"):
            assert not await sender(receiver.url).send(event())
        assert elsewhere.requests == []
    assert len(receiver.requests) == 1
    assert "HTTP 307" in caplog.text


async def test_a_refused_destination_is_not_retried(caplog):
    with caplog.at_level(logging.WARNING, logger="capserve.webhooks"):
        refused = sender("http://169.254.169.254/hook", transport=PublicAddressTransport)
        assert not await refused.send(event())
    assert "after 1 attempt(s): refused: 169.254.169.254 resolves to" in caplog.text


def test_a_secret_comes_from_the_environment_or_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HOOK_SECRET", "from-env")
    assert WebhookSecret(secret_env="HOOK_SECRET").read_secret() == "from-env"
    (tmp_path / "secret").write_text("from-file\n")
    assert WebhookSecret(secret_file=tmp_path / "secret").read_secret() == "from-file"


def test_a_missing_or_empty_secret_names_where_it_was_looked_for(monkeypatch, tmp_path):
    monkeypatch.setenv("EMPTY_SECRET", "")
    with pytest.raises(ValueError, match="environment variable EMPTY_SECRET"):
        WebhookSecret(secret_env="EMPTY_SECRET").read_secret()
    with pytest.raises(ValueError, match=f"secret_file {tmp_path / 'none'}: cannot read it"):
        WebhookSecret(secret_file=tmp_path / "none").read_secret()


@pytest.mark.parametrize("sources", [{}, {"secret_env": "A", "secret_file": "/run/secret"}])
def test_a_secret_has_exactly_one_source(sources):
    with pytest.raises(ValidationError, match="exactly one of secret_env"):
        WebhookSecret.model_validate(sources)


def test_verify_accepts_any_of_several_signatures_while_secrets_rotate():
    body, now = b"{}", 1_700_000_000
    header = f"t={now},v1={sign('old secret', now, body)},v1={sign(SECRET, now, body)}"
    assert verify(SECRET, header, body, now=now)


def test_signature_covers_timestamp_and_body():
    assert sign(SECRET, 1, b"x") != sign(SECRET, 2, b"x")
    assert sign(SECRET, 1, b"x") != sign(SECRET, 1, b"y")
    assert len(sign(SECRET, 1, b"x")) == 64


@pytest.mark.parametrize(
    ("url", "secret", "attempts"),
    [
        ("ftp://example.com", SECRET, 1),
        ("/relative", SECRET, 1),
        ("http://h", "", 1),
        ("http://h", SECRET, 0),
    ],
)
def test_sender_rejects_unusable_configuration(url, secret, attempts):
    with pytest.raises(ValueError):
        WebhookSender(url, secret, max_attempts=attempts)
