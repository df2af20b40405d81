"""Every error class of capabilities/, batchjobs/ and deployments/ answered through the one
mapping place (`deployments.http.errors.handle_error`) with its status, type and code.

The classes are found by importing every module of the three packages, so a new error class
fails `test_every_error_class_has_its_answer_here` until its answer is decided and written below.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
from dataclasses import dataclass

import pytest
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from batchjobs.files import FileTooLargeError
from batchjobs.json_depth import JsonTooDeepError
from batchjobs.lines import InputChangedError
from batchjobs.store import LeaseLostError, StoreUnavailableError
from capabilities import label_tree
from capabilities.alerts import AlertsConfigError
from capabilities.egress import EgressRefusedError
from capabilities.errors import (
    CapabilityError,
    EngineUnavailableError,
    ExamplesError,
    InvalidRequestError,
)
from capabilities.host import CapabilitySettingsError
from capabilities.label_tree import LabelTreeError
from capabilities.recommendations import CatalogError
from capabilities.registry import RegistryError
from deployments.batch.job import JobError
from deployments.calls.circuit_breaker import CircuitOpenError
from deployments.calls.guarded_handle import NotAcceptedError
from deployments.config import ConfigError
from deployments.http import errors
from deployments.http.errors import InternalError, handle_error

PACKAGES = ("capabilities", "batchjobs", "deployments")
CALLER = "invalid_request_error"
SERVER = "server_error"


@dataclass(frozen=True)
class Answer:
    error: Exception
    status: int
    type: str
    code: str
    retry_after: str | None = None


def internal(error: Exception) -> Answer:
    """Faults of the server or its operator (a config, a file on the server, a broken invariant)
    that a caller cannot fix: a 500 whose details stay in the logs."""
    return Answer(error, 500, SERVER, "internal_error")


ANSWERS = [
    # Raised by the HTTP layer itself.
    Answer(errors.ApiError("x"), 500, SERVER, "internal_error"),
    Answer(errors.BadRequestError("x"), 400, CALLER, "invalid_request"),
    Answer(errors.InvalidJsonError("x"), 400, CALLER, "invalid_json"),
    Answer(errors.UnprocessableError("x"), 422, CALLER, "validation_error"),
    Answer(errors.PayloadTooLargeError("x"), 413, CALLER, "payload_too_large"),
    Answer(errors.StreamNotSupportedError("x"), 400, CALLER, "stream_not_supported"),
    Answer(errors.NotFoundError("x"), 404, CALLER, "not_found"),
    Answer(errors.ModelNotFoundError("x"), 404, CALLER, "model_not_found"),
    Answer(errors.MethodNotAllowedError("x"), 405, CALLER, "method_not_allowed"),
    Answer(errors.UnsupportedMediaTypeError("x"), 415, CALLER, "unsupported_media_type"),
    Answer(errors.AuthenticationError("x"), 401, CALLER, "invalid_api_key"),
    Answer(errors.PermissionDeniedError("x"), 403, CALLER, "insufficient_scope"),
    Answer(errors.RetryLaterError("x", 2.5), 500, SERVER, "internal_error", retry_after="3"),
    Answer(errors.RateLimitedError("x", 0.2), 429, "rate_limit_error", "rate_limit_exceeded", "1"),
    Answer(errors.NotReadyError("x"), 503, SERVER, "not_ready", retry_after="5"),
    Answer(errors.ServiceUnavailableError("x", 7), 503, SERVER, "service_unavailable", "7"),
    Answer(errors.EngineOutputError("x"), 502, SERVER, "engine_output_error"),
    Answer(errors.CapabilityFailedError("x"), 500, SERVER, "capability_failed"),
    Answer(InternalError(), 500, SERVER, "internal_error"),
    # Raised below it, by capability logic, batch jobs and the deployments' wiring.
    Answer(InvalidRequestError("x", "texts"), 400, CALLER, "invalid_request"),
    Answer(ExamplesError("x"), 400, CALLER, "invalid_request"),
    Answer(EngineUnavailableError("x", 3), 503, SERVER, "service_unavailable", retry_after="3"),
    Answer(FileTooLargeError("x"), 413, CALLER, "payload_too_large"),
    Answer(JsonTooDeepError(32), 400, CALLER, "invalid_json"),
    Answer(StoreUnavailableError("x"), 503, SERVER, "service_unavailable", retry_after="5"),
    internal(CapabilityError("x")),
    internal(CapabilitySettingsError("x")),
    internal(CatalogError("x")),
    internal(AlertsConfigError("x")),
    internal(RegistryError("x")),
    internal(EgressRefusedError("x")),
    internal(InputChangedError("x")),
    internal(LeaseLostError("x")),
    internal(ConfigError("x")),
    internal(JobError("x")),
    internal(LabelTreeError("x")),
    # Never leaves load_label_tree, which raises it as the LabelTreeError naming the file.
    internal(label_tree._Problem("x")),
    # The guarded handle answers these as an engine's or runner's unavailability itself.
    internal(CircuitOpenError("engine 'minilm'", 5)),
    internal(NotAcceptedError()),
]


def error_classes() -> set[type[BaseException]]:
    """Every exception class defined in the three packages, each module imported first."""
    for package in PACKAGES:
        root = importlib.import_module(package)
        for module in pkgutil.walk_packages(root.__path__, f"{package}."):
            importlib.import_module(module.name)
    found: set[type[BaseException]] = set()
    pending: list[type[BaseException]] = [BaseException]
    while pending:
        for subclass in pending.pop().__subclasses__():
            pending.append(subclass)
            if subclass.__module__.split(".")[0] in PACKAGES:
                found.add(subclass)
    return found


def test_every_error_class_has_its_answer_here():
    answered = {type(answer.error) for answer in ANSWERS}
    missing = {f"{c.__module__}.{c.__qualname__}" for c in error_classes() - answered}
    assert not missing, f"decide how these are answered (api_error_for) and add them: {missing}"


def answered(error: Exception) -> tuple[int, dict[str, str | None], dict[str, str]]:
    request = Request({"type": "http", "method": "POST", "path": "/v1/classify", "headers": []})
    response = asyncio.run(handle_error(request, error))
    return response.status_code, json.loads(response.body)["error"], dict(response.headers)


@pytest.mark.parametrize("answer", ANSWERS, ids=lambda answer: type(answer.error).__name__)
def test_each_error_is_answered_with_its_status_type_and_code(answer: Answer, caplog):
    status, body, headers = answered(answer.error)

    assert (status, body["type"], body["code"]) == (answer.status, answer.type, answer.code)
    assert headers.get("retry-after") == answer.retry_after
    unexpected = not isinstance(answer.error, errors.ApiError) and answer.status == 500
    if unexpected:
        # What went wrong stays in the logs, found by the request id.
        assert body["message"] == InternalError().message
    else:
        assert str(answer.error) in body["message"]
    logged = any("unhandled error" in record.message for record in caplog.records)
    assert logged == unexpected


def test_a_validation_error_names_the_field_at_fault():
    class Body(BaseModel):
        texts: list[str]

    with pytest.raises(ValidationError) as invalid:
        Body.model_validate({"texts": ["a", 2]})

    status, body, _ = answered(invalid.value)

    assert (status, body["type"], body["code"]) == (422, CALLER, "validation_error")
    assert body["message"] == "texts.1: Input should be a valid string"
    assert body["param"] == "texts.1"


def test_a_callers_bad_input_keeps_the_field_it_names():
    _, body, _ = answered(InvalidRequestError("labels: give at least 2 labels", "labels"))
    assert body["param"] == "labels"
