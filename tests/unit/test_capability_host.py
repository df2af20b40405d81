"""Where capabilities run: the host that loads and swaps a capability's settings, the inline
capabilities of a replica and their live reload, and the embedding memo dependents reuse."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from capabilities.alerts import AlertsCapability
from capabilities.base import Resources
from capabilities.batching import RunCall
from capabilities.embedding_memo import EmbeddingMemo
from capabilities.host import CapabilityHost, CapabilitySettingsError
from capabilities.registry import capability_class
from deployments.config import ConfigError
from deployments.dag.capability_clients import (
    InlineCapability,
    configure_inline,
    inline_settings,
)
from tests.fakes import FakeEngine, classified
from tests.http_receiver import HttpReceiver
from tests.unit.test_config import check_config, default_args  # noqa: F401 - fixture
from tests.unit.test_dag import Upper


def upper_host(batches: list | None = None) -> CapabilityHost:
    def observe(name, report, cache_consulted):
        if batches is not None:
            batches.append((name, report.calls, report.runs, cache_consulted))

    return CapabilityHost(Upper, Resources(), None, observe)


async def test_a_host_runs_coalesced_calls_once_and_reports_the_batch():
    batches: list = []
    host = upper_host(batches)
    await host.configure({})
    replies = await host.run([RunCall(texts=["a"]), RunCall(texts=["a", "b"])])
    assert [[echo.value for echo in reply.outputs] for reply in replies] == [["A"], ["A", "B"]]
    assert batches == [("upper", 2, 1, False)]
    assert host.describe().name == "upper"


async def test_a_host_refuses_use_before_its_settings_and_bad_settings_by_field():
    host = CapabilityHost(capability_class("alerts", None), Resources(), None)
    with pytest.raises(RuntimeError, match="before its settings are loaded"):
        await host.run([RunCall(texts=["a"])])
    with pytest.raises(CapabilitySettingsError, match="settings of capability 'alerts'"):
        await host.configure({"rules_path": 3, "no_such_field": True})


def test_inline_capabilities_are_the_default_and_carry_their_settings(default_args):  # noqa: F811
    config = check_config(default_args)
    assert {c.placement for c in config.capabilities} == {"inline"}
    settings = inline_settings(config)
    assert sorted(settings) == ["alerts", "classification", "gates", "recommendations"]
    assert settings["classification"]["strategy"] == "knn"


def test_only_deployment_placed_capabilities_get_runners(default_args):  # noqa: F811
    default_args["capabilities"][1]["placement"] = "deployment"
    config = check_config(default_args)
    assert [c.name for c in config.deployed_capabilities] == ["recommendations"]
    assert sorted(inline_settings(config)) == ["alerts", "classification", "gates"]


def test_a_placement_is_validated(default_args):  # noqa: F811
    default_args["capabilities"][0]["placement"] = "sidecar"
    with pytest.raises(ConfigError, match=r"capabilities\.0\.placement"):
        check_config(default_args)


class Swappable(InlineCapability):
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.default_settings = {}
        self.fail = fail
        self.loaded: list = []
        self.serving: object = None

    async def load(self, settings):
        await asyncio.sleep(0)
        if self.fail:
            raise CapabilitySettingsError(f"settings of capability {self.name!r}: bad rules_path")
        return ("instance", settings)

    def swap_in(self, capability):
        self.serving = capability


async def test_a_live_reload_swaps_all_inline_capabilities_or_none():
    good, bad = Swappable("classification"), Swappable("alerts", fail=True)
    with pytest.raises(
        ConfigError, match="user_config of Ingress: settings of capability 'alerts'"
    ):
        await configure_inline({"classification": good, "alerts": bad}, {}, "Ingress")
    assert good.serving is None
    await configure_inline({"classification": good}, {"classification": {"k": 3}}, "Ingress")
    assert good.serving == ("instance", {"k": 3})
    # Named nowhere in the override: the app's settings.
    await configure_inline({"classification": good}, {}, "Ingress")
    assert good.serving == ("instance", None)


async def test_a_reload_naming_an_unknown_capability_is_refused():
    with pytest.raises(ConfigError, match=r"\['sentiment'\] are not inline capabilities"):
        await configure_inline({"alerts": Swappable("alerts")}, {"sentiment": {}}, "batch-runner")


async def test_the_memo_embeds_each_text_once_and_stays_bounded():
    engine = FakeEngine()
    memo = EmbeddingMemo(max_entries=3)
    first = await memo.embed(["a b", "c", "a b"], engine.embed)
    assert engine.embedded == ["a b", "c"]
    again = await memo.embed(["c", "a b"], engine.embed)
    assert engine.embedded == ["a b", "c"]
    np.testing.assert_array_equal(again, first[[1, 0]])
    await memo.embed(["d", "e", "f"], engine.embed)
    await memo.embed(["a b"], engine.embed)
    assert engine.embedded == ["a b", "c", "d", "e", "f", "a b"]


async def test_alert_deliveries_of_a_replaced_instance_finish_and_close_waits_for_them(
    monkeypatch,
):
    monkeypatch.setenv("HOST_TEST_SECRET", "s3cret")
    with HttpReceiver() as receiver:
        webhook = {"type": "webhook", "url": receiver.url, "secret_env": "HOST_TEST_SECRET"}
        settings = {
            "rules": [
                {"name": "r", "severity": "high", "message": "m", "when": {"label_in": ["a"]}}
            ],
            "sinks": [webhook],
        }
        host = CapabilityHost(AlertsCapability, Resources(), None)
        await host.configure(settings)
        # The receiver fails the first attempt: the delivery is waiting to retry when a reload
        # replaces the instance that started it.
        receiver.fail_next(1)
        await host.run([RunCall(texts=["x"], parents={"classification": [classified("a")]})])
        await host.configure({**settings, "sinks": [webhook, {"type": "log"}]})
        await host.close()
        assert len(receiver.requests) == 2
        assert receiver.requests[0].body == receiver.requests[1].body
