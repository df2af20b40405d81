import json
import logging

import pytest
from pydantic import ValidationError

from capabilities.alerts import (
    AlertList,
    AlertRule,
    AlertsCapability,
    AlertsConfigError,
    AlertsSettings,
    Condition,
    parse_rules,
)
from capabilities.base import BatchLine, Resources, RunContext, TextSource
from capabilities.classification import Classification
from capabilities.host import CapabilityHost
from capabilities.webhooks import SIGNATURE_HEADER, verify
from tests.conftest import BANKING77
from tests.fakes import classified
from tests.http_receiver import HttpReceiver

SHIPPED_RULES = BANKING77 / "alert_rules.yaml"


def rule(name: str, severity: str = "high", message: str = "m", **when) -> dict:
    return {"name": name, "severity": severity, "message": message, "when": when}


class FakeCounter:
    def __init__(self) -> None:
        self.increments: list[tuple[float, dict[str, str] | None]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.increments.append((value, tags))


class FakeCounterFactory:
    def __init__(self) -> None:
        self.counters: dict[str, tuple[str, tuple[str, ...], FakeCounter]] = {}

    def __call__(self, name: str, description: str, tag_keys: tuple[str, ...]) -> FakeCounter:
        counter = FakeCounter()
        self.counters[name] = (description, tag_keys, counter)
        return counter


async def loaded(resources: Resources | None = None, **settings) -> AlertsCapability:
    capability = AlertsCapability(AlertsSettings.model_validate(settings), resources or Resources())
    await capability.load()
    return capability


async def alerts_for(
    capability: AlertsCapability, items: list[tuple[str, Classification]]
) -> list[AlertList]:
    texts = [text for text, _ in items]
    context = RunContext(parents={"classification": [c for _, c in items]})
    return await capability.run(texts, context)


@pytest.mark.parametrize(
    ("condition", "text", "label", "confidence", "expected"),
    [
        ({"label_in": ["a", "b"]}, "t", "b", 0.9, True),
        ({"label_in": ["a", "b"]}, "t", "c", 0.9, False),
        ({"label_not_in": ["a"]}, "t", "c", 0.9, True),
        ({"label_not_in": ["a"]}, "t", "a", 0.9, False),
        ({"confidence_above": 0.5}, "t", "a", 0.51, True),
        ({"confidence_above": 0.5}, "t", "a", 0.5, False),
        ({"confidence_below": 0.4}, "t", "a", 0.39, True),
        ({"confidence_below": 0.4}, "t", "a", 0.4, False),
        ({"text_matches": r"(?i)\bfraud"}, "This is FRAUDULENT", "a", 0.9, True),
        ({"text_matches": r"\bfraud"}, "This is FRAUDULENT", "a", 0.9, False),
        ({"text_matches": "stolen"}, "my card was stolen today", "a", 0.9, True),
    ],
)
def test_each_condition_kind(condition, text, label, confidence, expected):
    assert (
        Condition.model_validate(condition).matches(text, classified(label, confidence)) is expected
    )


def test_checks_set_side_by_side_must_all_hold():
    condition = Condition.model_validate({"label_in": ["a"], "confidence_above": 0.5})
    assert condition.matches("t", classified("a", 0.6))
    assert not condition.matches("t", classified("a", 0.4))
    assert not condition.matches("t", classified("b", 0.6))


def test_all_any_and_not_combine():
    condition = Condition.model_validate(
        {
            "all": [
                {"any": [{"label_in": ["a"]}, {"text_matches": "urgent"}]},
                {"not": {"confidence_below": 0.3}},
            ]
        }
    )
    assert condition.matches("t", classified("a", 0.5))
    assert condition.matches("urgent please", classified("b", 0.5))
    assert not condition.matches("t", classified("b", 0.5))
    assert not condition.matches("urgent", classified("a", 0.2))


def test_not_is_accepted_by_its_python_name_too():
    by_alias = Condition.model_validate({"not": {"label_in": ["a"]}})
    assert Condition(not_=Condition(label_in=["a"])) == by_alias
    assert by_alias.matches("t", classified("b")) and not by_alias.matches("t", classified("a"))


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        ({}, "at least one of"),
        ({"all": [{}]}, "at least one of"),
        ({"label_in": []}, "at least 1 item"),
        ({"confidence_above": 0.6, "confidence_below": 0.5}, "can never both hold"),
        ({"confidence_above": 1.5}, "less than or equal to 1"),
        ({"label": "a"}, "Extra inputs are not permitted"),
    ],
)
def test_conditions_that_check_nothing_or_cannot_hold_are_rejected(condition, problem):
    with pytest.raises(ValidationError, match=problem):
        Condition.model_validate(condition)


def test_invalid_regex_names_the_pattern_the_field_and_the_rule():
    with pytest.raises(ValidationError) as error:
        AlertsSettings.model_validate(
            {"rules": [rule("ok", label_in=["a"]), rule("bad", any=[{"text_matches": "card(s"}])]}
        )
    message = str(error.value)
    assert "rules.1" in message
    assert "rule 'bad'" in message
    assert "when.any.0.text_matches" in message
    assert "invalid regular expression 'card(s'" in message


def test_duplicate_rule_names_are_rejected():
    with pytest.raises(ValidationError, match="repeated: twice"):
        AlertsSettings.model_validate(
            {
                "rules": [
                    rule("twice", label_in=["a"]),
                    rule("once", label_in=["b"]),
                    rule("twice", label_in=["c"]),
                ]
            }
        )


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ("{lable} fired", r"placeholder \{lable\} is unknown"),
        ("{} fired", r"placeholder \{\} is unknown"),
        ("{label.upper} fired", r"placeholder \{label.upper\} is unknown"),
        ("{confidence:.2q}", "does not format"),
        ("{label", "not a valid template"),
    ],
)
def test_bad_message_templates_are_rejected_at_config_time(message, problem):
    with pytest.raises(ValidationError, match=problem) as error:
        AlertsSettings.model_validate({"rules": [rule("r", message=message, label_in=["a"])]})
    assert "rule 'r': message:" in str(error.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"sinks": []},
        {"rules": [rule("r", label_in=["a"])], "rules_path": "rules.yaml"},
    ],
)
def test_rules_come_from_exactly_one_of_rules_and_rules_path(settings):
    with pytest.raises(ValidationError, match="exactly one of rules and rules_path"):
        AlertsSettings.model_validate(settings)


def test_sinks_default_to_log_and_metrics_and_are_told_apart_by_type():
    settings = AlertsSettings.model_validate({"rules": [rule("r", label_in=["a"])]})
    assert [sink.type for sink in settings.sinks] == ["log", "metrics"]
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        AlertsSettings.model_validate(
            {"rules": [rule("r", label_in=["a"])], "sinks": [{"type": "x"}]}
        )
    with pytest.raises(ValidationError, match="secret_env"):
        AlertsSettings.model_validate(
            {
                "rules": [rule("r", label_in=["a"])],
                "sinks": [{"type": "webhook", "url": "http://h"}],
            }
        )


async def test_alerts_are_ordered_by_severity_then_rule_order():
    capability = await loaded(
        rules=[
            rule("low_one", "low", label_in=["a"]),
            rule("critical_one", "critical", label_in=["a"]),
            rule("info_one", "info", label_in=["a"]),
            rule("high_one", "high", label_in=["a"]),
            rule("critical_two", "critical", label_in=["a"]),
            rule("not_matching", "critical", label_in=["b"]),
        ],
        sinks=[],
    )
    [result] = await alerts_for(capability, [("t", classified("a"))])
    assert [alert.rule for alert in result.alerts] == [
        "critical_one",
        "critical_two",
        "high_one",
        "low_one",
        "info_one",
    ]
    assert [alert.severity for alert in result.alerts] == [
        "critical",
        "critical",
        "high",
        "low",
        "info",
    ]


async def test_each_text_gets_its_own_alerts_in_order():
    capability = await loaded(rules=[rule("is_a", label_in=["a"])], sinks=[])
    results = await alerts_for(
        capability, [("x", classified("b")), ("y", classified("a")), ("z", classified("b"))]
    )
    assert [[alert.rule for alert in result.alerts] for result in results] == [[], ["is_a"], []]


async def test_messages_are_formatted_with_label_confidence_and_text():
    capability = await loaded(
        rules=[
            rule(
                "r",
                message="{label} at {confidence:.0%} ({confidence:.2f}): {text:.9}",
                label_in=["lost_card"],
            )
        ],
        sinks=[],
    )
    [result] = await alerts_for(
        capability, [("someone stole my card", classified("lost_card", 0.876))]
    )
    assert result.alerts[0].message == "lost_card at 88% (0.88): someone s"


async def test_text_with_braces_is_not_a_template():
    capability = await loaded(rules=[rule("r", message="{text}", label_in=["a"])], sinks=[])
    [result] = await alerts_for(capability, [("{label} {0}", classified("a"))])
    assert result.alerts[0].message == "{label} {0}"


async def test_rules_file_is_read_at_load_and_its_content_is_in_the_version(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {name: r, severity: low, message: m, when: {label_in: [a]}}\n")
    first = await loaded(rules_path=path, sinks=[])
    assert [r.name for r in first.rules] == ["r"]
    same = await loaded(rules_path=path, sinks=[])
    assert same.version == first.version
    path.write_text("rules:\n  - {name: r, severity: low, message: m, when: {label_in: [b]}}\n")
    edited = await loaded(rules_path=path, sinks=[])
    assert edited.version != first.version


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("rules: [", "is not valid YAML"),
        ("- just a list\n", "needs a top-level `rules:` list"),
        ("rules: []\n", "rules: List should have at least 1 item"),
        (
            "rules:\n  - {name: bad, severity: urgent, message: m, when: {label_in: [a]}}\n",
            "rules.0: rule 'bad': severity: Input should be",
        ),
    ],
)
async def test_rules_file_problems_name_the_file(tmp_path, content, problem):
    path = tmp_path / "rules.yaml"
    path.write_text(content)
    with pytest.raises(AlertsConfigError, match=problem) as error:
        await loaded(rules_path=path)
    assert str(path) in str(error.value)


async def test_missing_rules_file_is_named(tmp_path):
    with pytest.raises(AlertsConfigError, match="missing.yaml cannot be read"):
        await loaded(rules_path=tmp_path / "missing.yaml")


def shipped_rules() -> list[AlertRule]:
    return parse_rules(SHIPPED_RULES.read_bytes(), SHIPPED_RULES)


def labels_named(condition: Condition) -> set[str]:
    named = set(condition.label_in or []) | set(condition.label_not_in or [])
    for child in [*(condition.all or []), *(condition.any or []), condition.not_]:
        if child is not None:
            named |= labels_named(child)
    return named


def test_every_label_in_the_shipped_rules_is_a_banking77_category():
    categories = set(json.loads((BANKING77 / "categories.json").read_text()))
    rules = shipped_rules()
    assert 8 <= len(rules) <= 12
    named = set().union(*(labels_named(r.when) for r in rules))
    assert named, "the shipped rules should name labels"
    assert named <= categories, f"not Banking77 categories: {sorted(named - categories)}"


async def test_shipped_rules_alert_on_fraud_and_uncertainty():
    capability = await loaded(rules_path=SHIPPED_RULES, sinks=[])
    stolen, unsure, harmless = await alerts_for(
        capability,
        [
            ("Someone stole my card and used it", classified("lost_or_stolen_card", 0.8)),
            ("hmm not sure", classified("exchange_rate", 0.2)),
            ("what is the exchange rate", classified("exchange_rate", 0.9)),
        ],
    )
    assert [a.rule for a in stolen.alerts] == ["fraud_or_theft_reported", "card_lost_or_stolen"]
    assert [a.severity for a in stolen.alerts] == ["critical", "high"]
    assert [a.rule for a in unsure.alerts] == ["route_to_human"]
    assert "exchange_rate at 20%" in unsure.alerts[0].message
    assert harmless.alerts == []


async def test_metrics_sink_counts_alerts_by_rule_and_severity():
    factory = FakeCounterFactory()
    capability = await loaded(
        Resources(counter=factory),
        rules=[rule("a_seen", "high", label_in=["a"]), rule("unsure", "low", confidence_below=0.5)],
        sinks=[{"type": "metrics"}],
    )
    await alerts_for(capability, [("x", classified("a", 0.4)), ("y", classified("a"))])
    _, tag_keys, counter = factory.counters["capserve_alerts_total"]
    assert tag_keys == ("rule", "severity")
    assert counter.increments == [
        (1.0, {"rule": "a_seen", "severity": "high"}),
        (1.0, {"rule": "unsure", "severity": "low"}),
        (1.0, {"rule": "a_seen", "severity": "high"}),
    ]


async def test_metrics_sink_without_a_counter_factory_is_skipped():
    capability = await loaded(rules=[rule("r", label_in=["a"])], sinks=[{"type": "metrics"}])
    [result] = await alerts_for(capability, [("x", classified("a"))])
    assert [a.rule for a in result.alerts] == ["r"]


async def test_log_sink_writes_one_json_line_per_alert(caplog):
    capability = await loaded(
        rules=[rule("r", "medium", "{label} seen", label_in=["a"])], sinks=[{"type": "log"}]
    )
    with caplog.at_level(logging.WARNING, logger="capserve.alerts"):
        await alerts_for(
            capability, [("secret text", classified("a", 0.75)), ("x", classified("b"))]
        )
    [record] = [r for r in caplog.records if r.name == "capserve.alerts"]
    assert record.levelno == logging.WARNING
    logged = json.loads(record.getMessage())
    assert logged.pop("id").startswith("evt_")
    assert logged == {
        "rule": "r",
        "severity": "medium",
        "message": "a seen",
        "label": "a",
        "confidence": 0.75,
    }
    assert "secret text" not in caplog.text


@pytest.fixture()
def receiver():
    with HttpReceiver() as server:
        yield server


async def test_webhook_sink_delivers_one_signed_event_per_alert_in_the_background(
    receiver, monkeypatch
):
    monkeypatch.setenv("ALERTS_TEST_SECRET", "s3cret")
    capability = await loaded(
        rules=[rule("is_a", "high", label_in=["a"]), rule("unsure", "low", confidence_below=0.5)],
        sinks=[{"type": "webhook", "url": receiver.url, "secret_env": "ALERTS_TEST_SECRET"}],
    )
    await alerts_for(capability, [("x", classified("a", 0.3)), ("y", classified("a"))])
    assert receiver.requests == [], "the run must not wait for the delivery"
    await capability.close()
    for request in receiver.requests:
        assert verify("s3cret", request.headers[SIGNATURE_HEADER.lower()], request.body)
    events = [json.loads(request.body) for request in receiver.requests]
    assert {event["type"] for event in events} == {"alerts.fired"}
    assert sorted((e["data"]["rule"], e["data"]["confidence"]) for e in events) == [
        ("is_a", 0.3),
        ("is_a", 0.9),
        ("unsure", 0.3),
    ]
    assert len({event["id"] for event in events}) == 3


def sources(*items: tuple[str, int, str | None, BatchLine | None]) -> list[TextSource]:
    return [
        TextSource(request_id=request_id, item_index=index, item_id=item_id, batch_line=line)
        for request_id, index, item_id, line in items
    ]


async def test_a_batch_line_run_again_fires_events_with_the_same_ids(receiver, monkeypatch):
    # A batch line re-run after a crash has a new request id; its batch id, custom_id, item and
    # rule are the same, and so are its events' ids: a receiver drops the repeats.
    monkeypatch.setenv("ALERTS_TEST_SECRET", "s3cret")
    capability = await loaded(
        rules=[rule("is_a", "high", label_in=["a"]), rule("unsure", "low", confidence_below=0.5)],
        sinks=[{"type": "webhook", "url": receiver.url, "secret_env": "ALERTS_TEST_SECRET"}],
    )
    line = BatchLine(batch_id="batch_1", custom_id="line-7")
    runs = []
    for attempt in ("req_first", "req_after_the_crash"):
        context = RunContext(
            parents={"classification": [classified("a", 0.3)]},
            sources=[sources((attempt, 0, "ticket-9", line))],
        )
        await capability.run(["x"], context)
        await capability.close()
        runs.append([json.loads(request.body) for request in receiver.requests[len(runs) * 2 :]])
    first, again = runs
    assert {e["id"] for e in first} == {e["id"] for e in again}
    assert len({e["id"] for e in first}) == 2, "one id per rule"
    for request in receiver.requests:
        assert request.headers["x-capserve-event-id"] == json.loads(request.body)["id"]
    data = first[0]["data"]
    assert data["batch_id"] == "batch_1" and data["custom_id"] == "line-7"
    assert (data["request_id"], data["item_id"], data["item_index"]) == (
        "req_first",
        "ticket-9",
        0,
    )


async def test_each_item_sharing_a_text_gets_its_own_event_with_its_request_and_item(
    receiver, monkeypatch
):
    monkeypatch.setenv("ALERTS_TEST_SECRET", "s3cret")
    capability = await loaded(
        rules=[rule("is_a", "high", label_in=["a"])],
        sinks=[{"type": "webhook", "url": receiver.url, "secret_env": "ALERTS_TEST_SECRET"}],
    )
    # Two requests coalesced into one run sent the same text: one run, two items fired.
    context = RunContext(
        parents={"classification": [classified("a")]},
        sources=[sources(("req_a", 0, "a-1", None), ("req_b", 2, None, None))],
    )
    [result] = await capability.run(["same text"], context)
    await capability.close()
    assert [alert.rule for alert in result.alerts] == ["is_a"]
    events = [json.loads(request.body) for request in receiver.requests]
    assert sorted((e["data"]["request_id"], e["data"]["item_id"]) for e in events) == [
        ("req_a", "a-1"),
        ("req_b", None),
    ]
    assert len({e["id"] for e in events}) == 2


async def test_webhook_sink_sends_nothing_when_nothing_fired(receiver, monkeypatch):
    monkeypatch.setenv("ALERTS_TEST_SECRET", "s3cret")
    capability = await loaded(
        rules=[rule("is_a", label_in=["a"])],
        sinks=[{"type": "webhook", "url": receiver.url, "secret_env": "ALERTS_TEST_SECRET"}],
    )
    await alerts_for(capability, [("x", classified("b"))])
    await capability.close()
    assert receiver.requests == []


async def test_webhook_sink_without_its_secret_fails_at_load_naming_the_variable(monkeypatch):
    monkeypatch.delenv("ALERTS_MISSING_SECRET", raising=False)
    with pytest.raises(AlertsConfigError, match="ALERTS_MISSING_SECRET"):
        await loaded(
            rules=[rule("r", label_in=["a"])],
            sinks=[
                {
                    "type": "webhook",
                    "url": "http://127.0.0.1:9/hook",
                    "secret_env": "ALERTS_MISSING_SECRET",
                }
            ],
        )


async def test_webhook_sink_reads_its_secret_from_a_file(receiver, tmp_path):
    (tmp_path / "secret").write_text("from-a-file\n")
    capability = await loaded(
        rules=[rule("is_a", label_in=["a"])],
        sinks=[{"type": "webhook", "url": receiver.url, "secret_file": str(tmp_path / "secret")}],
    )
    await alerts_for(capability, [("x", classified("a"))])
    await capability.close()
    [request] = receiver.requests
    assert verify("from-a-file", request.headers[SIGNATURE_HEADER.lower()], request.body)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://user:pw@hooks.slack.com/services/T00/B00/XyZsecret?token=abc#x",
            "https://hooks.slack.com/[redacted]",
        ),
        ("http://[fd00::1]:8443/alerts/t0ken", "http://[fd00::1]:8443/[redacted]"),
        ("https://alerts.example.com", "https://alerts.example.com"),
    ],
)
async def test_callers_see_a_webhook_sink_url_cut_to_its_origin(monkeypatch, url, shown):
    monkeypatch.setenv("ALERTS_TEST_SECRET", "s3cret")
    settings = {
        "rules": [rule("r", label_in=["a"])],
        "sinks": [{"type": "webhook", "url": url, "secret_env": "ALERTS_TEST_SECRET"}],
    }
    host = CapabilityHost(AlertsCapability, Resources(), None)
    await host.configure(settings)
    info = host.describe()  # what /v1/capabilities shows
    assert info.settings["sinks"][0]["url"] == shown
    # What replicas load and what the settings version hashes keep the whole URL.
    parsed = AlertsSettings.model_validate(settings)
    assert parsed.model_dump(mode="json")["sinks"][0]["url"] == url
