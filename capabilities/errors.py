"""Typed errors raised by capability logic; the ingress maps each to one HTTP status."""

from pydantic import ValidationError


class CapabilityError(Exception):
    """Base of every error capability logic raises on purpose."""


class InvalidRequestError(CapabilityError):
    """The caller asked for something this configuration cannot do (a 4xx, not a crash)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ExamplesError(CapabilityError):
    """A labelled examples file is missing, empty or lacks a named column."""


class EngineUnavailableError(CapabilityError):
    """An engine is overloaded or down; the caller may retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def validation_problems(error: ValidationError, prefix: str | None = None) -> str:
    """One line per issue, each naming the field at fault, e.g. `limits.max_text_chars: ...`."""
    lines = []
    for issue in error.errors(include_url=False):
        location = ".".join([*([prefix] if prefix else []), *(str(part) for part in issue["loc"])])
        message = issue["msg"].removeprefix("Value error, ")
        lines.append(f"{location}: {message}" if location else message)
    return "; ".join(lines)
