"""Alerts: declarative rules over each text's classification, fired to log, metrics and webhooks.

A rule has a name, a severity, a message template and a condition (`when`) over the label, the
confidence and the text. Each text gets the alerts whose rules match, most severe first, then in
rule order. Every fired alert also goes to the configured sinks; webhook deliveries run in the
background, so answers never wait on a receiver, and are waited for when the instance closes.

Each alert of each item is one event whose id is derived from where the item came from and the
rule: the request id and item, or for a batch line the batch id, custom_id and item, which stay
the same when a line runs again after a crash. Receivers de-duplicate by that id.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from capabilities.base import (
    Capability,
    Counter,
    RedactedUrl,
    Resources,
    RunContext,
    TextSource,
)
from capabilities.classification import Classification
from capabilities.errors import CapabilityError
from capabilities.webhooks import Event, WebhookSecret, WebhookSender

Severity = Literal["critical", "high", "medium", "low", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low", "info")
MESSAGE_FIELDS = ("label", "confidence", "text")
ALERTS_EVENT_TYPE = "alerts.fired"
# While a receiver is down every delivery retries for a while; past this many in flight, new
# events are dropped (and logged) rather than letting memory grow without bound.
MAX_PENDING_DELIVERIES = 1000

logger = logging.getLogger("capserve.alerts")


class AlertsConfigError(CapabilityError):
    """The rules file or a sink cannot be used at load; the message names the file or sink."""


class Condition(BaseModel):
    """Checks on one text and its classification; all the checks that are set must hold."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    label_in: list[str] | None = Field(default=None, min_length=1)
    label_not_in: list[str] | None = Field(default=None, min_length=1)
    confidence_above: float | None = Field(default=None, ge=0, le=1, description="Strictly above.")
    confidence_below: float | None = Field(default=None, ge=0, le=1, description="Strictly below.")
    text_matches: str | None = Field(
        default=None,
        description="Regular expression searched anywhere in the text; `(?i)` ignores case.",
    )
    all: list[Condition] | None = Field(default=None, min_length=1)
    any: list[Condition] | None = Field(default=None, min_length=1)
    not_: Condition | None = Field(default=None, alias="not")

    _pattern: re.Pattern[str] | None = PrivateAttr(default=None)

    @field_validator("text_matches")
    @classmethod
    def _valid_regex(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"invalid regular expression {pattern!r}: {error}") from None
        return pattern

    @model_validator(mode="after")
    def _checks_something(self) -> Condition:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError(
                "a condition needs at least one of label_in, label_not_in, confidence_above, "
                "confidence_below, text_matches, all, any, not"
            )
        above, below = self.confidence_above, self.confidence_below
        if above is not None and below is not None and above >= below:
            raise ValueError(
                f"confidence_above {above} and confidence_below {below} can never both hold"
            )
        return self

    def model_post_init(self, context: Any) -> None:
        if self.text_matches is not None:
            self._pattern = re.compile(self.text_matches)

    def matches(self, text: str, classification: Classification) -> bool:
        # A rule naming a parent of a label tree holds for every text answered at or under it.
        labels, confidence = classification.path_labels, classification.confidence
        if self.label_in is not None and not any(label in self.label_in for label in labels):
            return False
        if self.label_not_in is not None and any(label in self.label_not_in for label in labels):
            return False
        if self.confidence_above is not None and not confidence > self.confidence_above:
            return False
        if self.confidence_below is not None and not confidence < self.confidence_below:
            return False
        if self._pattern is not None and self._pattern.search(text) is None:
            return False
        if self.all is not None and not all(c.matches(text, classification) for c in self.all):
            return False
        if self.any is not None and not any(c.matches(text, classification) for c in self.any):
            return False
        return self.not_ is None or not self.not_.matches(text, classification)


def _message_problem(template: str) -> str | None:
    """Why `template` cannot be formatted with label (str), confidence (float) and text (str)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        return f"{template!r} is not a valid template: {error}"
    for _, field, _, _ in parsed:
        if field is not None and field not in MESSAGE_FIELDS:
            return f"placeholder {{{field}}} is unknown; use {{label}}, {{confidence}} or {{text}}"
    try:
        template.format(label="label", confidence=0.5, text="text")
    except (ValueError, TypeError, KeyError, IndexError) as error:
        return f"{template!r} does not format: {error}"
    return None


def _problems(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in issue['loc']) or 'value'}: "
        f"{issue['msg'].removeprefix('Value error, ')}"
        for issue in error.errors(include_url=False)
    )


class AlertRule(BaseModel):
    """When `when` holds for a text, it gets an alert with this severity and message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    severity: Severity
    message: str = Field(
        min_length=1,
        description="Format string over {label}, {confidence} and {text}, e.g. {confidence:.0%}.",
    )
    when: Condition

    @field_validator("message")
    @classmethod
    def _formattable(cls, template: str) -> str:
        problem = _message_problem(template)
        if problem:
            raise ValueError(problem)
        return template

    @model_validator(mode="wrap")
    @classmethod
    def _errors_name_the_rule(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> AlertRule:
        # Rules live in lists, where an error's location is only an index; the name finds it.
        try:
            return handler(data)
        except ValidationError as error:
            name = data.get("name") if isinstance(data, dict) else None
            if not isinstance(name, str):
                raise
            raise PydanticCustomError(
                "alert_rule", "{detail}", {"detail": f"rule {name!r}: {_problems(error)}"}
            ) from None

    def alert(self, text: str, classification: Classification) -> Alert:
        message = self.message.format(
            label=classification.label, confidence=classification.confidence, text=text
        )
        return Alert(rule=self.name, severity=self.severity, message=message)


def _unique_names(rules: list[AlertRule]) -> list[AlertRule]:
    counts = collections.Counter(rule.name for rule in rules)
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        raise ValueError(f"rule names must be unique; repeated: {', '.join(repeated)}")
    return rules


class AlertRules(BaseModel):
    """The content of a rules file: a top-level `rules:` list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[AlertRule] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[AlertRule]) -> list[AlertRule]:
        return _unique_names(rules)


def _read_rules(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise AlertsConfigError(f"alert rules file {path} cannot be read: {error}") from None


def parse_rules(content: bytes, source: Path) -> list[AlertRule]:
    """The rules of a YAML rules file; every problem names `source`."""
    try:
        document = yaml.safe_load(content)
    except yaml.YAMLError as error:
        raise AlertsConfigError(f"alert rules file {source} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise AlertsConfigError(f"alert rules file {source} needs a top-level `rules:` list")
    try:
        return AlertRules.model_validate(document).rules
    except ValidationError as error:
        raise AlertsConfigError(f"alert rules file {source}: {_problems(error)}") from None


class LogSink(BaseModel):
    """Each alert as one JSON line at WARNING on logger `capserve.alerts`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["log"] = "log"


class MetricsSink(BaseModel):
    """Counter `capserve_alerts_total` by rule and severity (when the runner exports metrics)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["metrics"] = "metrics"


class WebhookSink(WebhookSecret):
    """One signed `alerts.fired` event per fired alert of each item, POSTed to `url`; signed
    with the secret in `secret_env` or `secret_file`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["webhook"] = "webhook"
    url: RedactedUrl = Field(pattern=r"^https?://", description="Receiver of the events.")
    max_attempts: int = Field(default=5, ge=1)


SinkConfig = Annotated[LogSink | MetricsSink | WebhookSink, Field(discriminator="type")]


def _default_sinks() -> list[SinkConfig]:
    return [LogSink(), MetricsSink()]


class AlertsSettings(BaseModel):
    """Configuration of the alerts capability: rules inline or in a file, and where alerts go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[AlertRule] | None = Field(default=None, min_length=1)
    rules_path: Path | None = Field(
        default=None, description="YAML file with a top-level `rules:` list; read at load."
    )
    sinks: list[SinkConfig] = Field(default_factory=_default_sinks)

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[AlertRule] | None) -> list[AlertRule] | None:
        return _unique_names(rules) if rules is not None else None

    @field_validator("rules_path")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @model_validator(mode="after")
    def _one_source_of_rules(self) -> AlertsSettings:
        if (self.rules is None) == (self.rules_path is None):
            raise ValueError("give exactly one of rules and rules_path")
        return self


class Alert(BaseModel):
    rule: str
    severity: Severity
    message: str


class AlertList(BaseModel):
    """The alerts of one text, most severe first, then in rule order."""

    alerts: list[Alert]


class AlertsCapability(Capability[AlertsSettings, AlertList]):
    """Evaluates the rules on each classified text and hands what fired to the sinks."""

    name = "alerts"
    depends_on = ("classification",)
    settings_model = AlertsSettings
    output_model = AlertList
    # Every occurrence must reach the sinks, and rules are cheaper than a cache lookup.
    cacheable = False

    def __init__(self, settings: AlertsSettings, resources: Resources) -> None:
        super().__init__(settings, resources)
        self._rules: list[AlertRule] = []
        self._logs = any(isinstance(sink, LogSink) for sink in settings.sinks)
        self._alerts_counter: Counter | None = None
        self._webhooks: list[WebhookSender] = []
        # The event loop keeps only weak references to tasks; this set keeps deliveries alive.
        self._deliveries: set[asyncio.Task[bool]] = set()

    @property
    def rules(self) -> list[AlertRule]:
        """The loaded rules in evaluation order: most severe first, then as configured."""
        return list(self._rules)

    async def load(self) -> None:
        rules = self.settings.rules
        if rules is None:
            rules = self._read_rules_file()
        # sorted is stable, so rules of one severity keep their configured order.
        self._rules = sorted(rules, key=lambda rule: SEVERITIES.index(rule.severity))
        wants_metrics = any(isinstance(sink, MetricsSink) for sink in self.settings.sinks)
        if wants_metrics and self.resources.counter is not None:
            self._alerts_counter = self.resources.counter(
                "capserve_alerts_total", "Alerts fired, by rule and severity.", ("rule", "severity")
            )
        self._webhooks = [
            _webhook_sender(sink) for sink in self.settings.sinks if isinstance(sink, WebhookSink)
        ]

    def _read_rules_file(self) -> list[AlertRule]:
        path = self.settings.rules_path
        assert path is not None
        content = _read_rules(path)
        self.track_file(content)
        return parse_rules(content, path)

    @classmethod
    def check_files(cls, settings: AlertsSettings) -> None:
        if settings.rules_path is not None:
            parse_rules(_read_rules(settings.rules_path), settings.rules_path)

    @classmethod
    def public_view(cls, output: AlertList) -> Any:
        return [alert.model_dump(mode="json") for alert in output.alerts]

    async def run(self, texts: Sequence[str], context: RunContext) -> list[AlertList]:
        classifications = cast(Sequence[Classification], context.parents["classification"])
        outputs: list[AlertList] = []
        fired: list[Event] = []
        for position, (text, classification) in enumerate(zip(texts, classifications, strict=True)):
            alerts = [
                rule.alert(text, classification)
                for rule in self._rules
                if rule.when.matches(text, classification)
            ]
            outputs.append(AlertList(alerts=alerts))
            # One event per item the text stands for: requests coalesced into this run may
            # share a text, and each of their items fired. (A caller may not say where.)
            sources: Sequence[TextSource | None] = (
                context.sources[position] if context.sources else None
            ) or [None]
            fired += [
                alert_event(alert, classification, source) for alert in alerts for source in sources
            ]
        self._emit(fired)
        return outputs

    def _emit(self, fired: list[Event]) -> None:
        for event in fired:
            if self._logs:
                logger.warning("%s", json.dumps({"id": event.id} | event.data, ensure_ascii=False))
            if self._alerts_counter is not None:
                self._alerts_counter.inc(
                    tags={"rule": event.data["rule"], "severity": event.data["severity"]}
                )
            for sender in self._webhooks:
                if len(self._deliveries) >= MAX_PENDING_DELIVERIES:
                    logger.warning(
                        "dropped alerts event %s: %d webhook deliveries pending",
                        event.id,
                        len(self._deliveries),
                    )
                    continue
                task = asyncio.create_task(sender.send(event))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)

    async def close(self) -> None:
        """Waits for the webhook deliveries started so far: each ends delivered or given up."""
        while pending := [task for task in self._deliveries if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)


def alert_event(alert: Alert, classification: Classification, source: TextSource | None) -> Event:
    """The `alerts.fired` event of one alert of one item. Its id is the same every time the
    item's alert fires (a batch line run again after a crash, a request retried with its
    X-Request-ID), so receivers can drop repeats; without a source it is a fresh id."""
    data: dict[str, Any] = alert.model_dump() | {
        "label": classification.label,
        "confidence": classification.confidence,
    }
    if source is None:
        return Event(type=ALERTS_EVENT_TYPE, data=data)
    line = source.batch_line
    data |= {
        "request_id": source.request_id,
        "item_index": source.item_index,
        "item_id": source.item_id,
        "batch_id": line.batch_id if line else None,
        "custom_id": line.custom_id if line else None,
    }
    digest = hashlib.sha256(f"{source.stable_key}:{alert.rule}".encode()).hexdigest()
    return Event(id=f"evt_{digest[:32]}", type=ALERTS_EVENT_TYPE, data=data)


def _webhook_sender(sink: WebhookSink) -> WebhookSender:
    try:
        return WebhookSender(sink.url, sink.read_secret(), max_attempts=sink.max_attempts)
    except ValueError as error:
        raise AlertsConfigError(f"webhook sink: {error}") from None
