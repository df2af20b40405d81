"""Signed webhook delivery: HMAC-SHA256 signatures, the event envelope and a retrying sender.

A receiver checks `X-Capserve-Signature: t=<unix seconds>,v1=<hex>` with `verify`: the hex is
HMAC-SHA256 under the shared secret over `"<t>." + body`, so a captured request cannot be replayed
with another body, and the timestamp bounds how long it can be replayed at all.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
)

from capabilities.egress import EgressRefusedError

SIGNATURE_HEADER = "X-Capserve-Signature"
EVENT_ID_HEADER = "X-Capserve-Event-Id"
RETRIED_STATUSES = frozenset({408, 429})

logger = logging.getLogger("capserve.webhooks")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 under `secret` over `"<timestamp>." + body`."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The value of `X-Capserve-Signature` for `body` sent at `timestamp`."""
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """True when `header` signs exactly `body` under `secret` within `tolerance_s` of `now`."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode()
    # Several v1 values let a sender sign with an old and a new secret while rotating. Compared
    # as bytes: compare_digest refuses str with non-ASCII characters, which a header may hold.
    return any(
        hmac.compare_digest(expected, signature.encode("utf-8", "replace"))
        for signature in signatures
    )


class WebhookSecret(BaseModel):
    """Where a webhook's signing secret is: an environment variable or a file (e.g. a mounted
    Kubernetes secret). Never the config itself, which is copied to every replica, shown by
    `serve status` and kept in version control."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret_env: str | None = Field(
        default=None, min_length=1, description="Environment variable holding the secret."
    )
    secret_file: Path | None = Field(
        default=None, description="File holding the secret (surrounding whitespace ignored)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> WebhookSecret:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError(
                "give exactly one of secret_env (an environment variable) and secret_file "
                "(a file) holding the signing secret"
            )
        return self

    def read_secret(self) -> str:
        """The secret; a ValueError names the variable or file when it is missing or empty."""
        if self.secret_file is not None:
            try:
                secret = self.secret_file.read_text().strip()
            except OSError as error:
                raise ValueError(
                    f"secret_file {self.secret_file}: cannot read it: {error.strerror}"
                ) from None
            where = f"secret_file {self.secret_file}"
        else:
            secret = os.environ.get(str(self.secret_env), "")
            where = f"environment variable {self.secret_env} (secret_env)"
        if not secret:
            raise ValueError(f"{where} holding the signing secret is not set or empty")
        return secret


def _event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


class Event(BaseModel):
    """What a webhook delivers; receivers deduplicate retried deliveries by `id`."""

    id: str = Field(default_factory=_event_id)
    type: str
    created_at: int = Field(default_factory=lambda: int(time.time()))
    data: dict[str, Any]


class WebhookSender:
    """POSTs signed events to one URL, retrying what a later attempt may fix; never raises."""

    def __init__(
        self,
        url: str,
        secret: str,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
        max_backoff_s: float = 30.0,
        transport: Callable[[], httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        """`transport` makes each delivery's transport (e.g. `PublicAddressTransport` for a URL
        an API caller chose); httpx's default when None."""
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"webhook url {url!r} must be an absolute http(s) URL")
        if not secret:
            raise ValueError("webhook secret must not be empty")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        self.url = url
        self._secret = secret
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self._backoff = wait_exponential(multiplier=backoff_s, max=max_backoff_s)
        self._transport = transport
        # Webhook URLs often carry a token in their path or query; logs name the host only.
        self._host_for_logs = f"{parsed.scheme}://{parsed.netloc.decode()}"

    async def send(self, event: Event) -> bool:
        """Delivers `event`; True on a 2xx, False (with a warning logged) once it gives up."""
        body = event.model_dump_json().encode()
        transport = self._transport() if self._transport is not None else None
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._delay_s,
            # A refused destination is refused again; other transport errors may pass.
            retry=(
                retry_if_exception_type(httpx.TransportError)
                & retry_if_not_exception_type(EgressRefusedError)
            )
            | retry_if_result(lambda response: _is_retried(response.status_code)),
            retry_error_callback=_last_outcome,
        )
        # A redirect is not followed but fails the delivery: it could lead anywhere, around
        # whatever the URL was checked against.
        async with httpx.AsyncClient(
            timeout=self.timeout_s, transport=transport, follow_redirects=False
        ) as client:

            async def post() -> httpx.Response:
                headers = {
                    "Content-Type": "application/json",
                    # Signed per attempt: a retry after a long Retry-After still passes the
                    # receiver's timestamp tolerance.
                    SIGNATURE_HEADER: signature_header(self._secret, int(time.time()), body),
                    EVENT_ID_HEADER: event.id,
                }
                return await client.post(self.url, content=body, headers=headers)

            try:
                response: httpx.Response = await retrying(post)
            except EgressRefusedError as error:
                problem = f"refused: {error}"
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.is_success:
                    return True
                problem = f"HTTP {response.status_code}"
        logger.warning(
            "webhook event %s (%s) to %s not delivered after %d attempt(s): %s",
            event.id,
            event.type,
            self._host_for_logs,
            retrying.statistics["attempt_number"],
            problem,
        )
        return False

    def _delay_s(self, state: RetryCallState) -> float:
        """The receiver's Retry-After when it sent one, else `backoff_s` doubling per attempt;
        `max_backoff_s` at most."""
        outcome = state.outcome
        retry_after = (
            None if outcome is None or outcome.failed else _retry_after_s(outcome.result())
        )
        if retry_after is None:
            return self._backoff(state)
        return min(retry_after, self.max_backoff_s)


def _last_outcome(state: RetryCallState) -> Any:
    """What the last attempt answered or raised: giving up reports it, not a RetryError."""
    assert state.outcome is not None
    return state.outcome.result()


def _is_retried(status: int) -> bool:
    return status in RETRIED_STATUSES or status >= 500


def _retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds; its HTTP-date form is rare from webhook receivers and ignored."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
