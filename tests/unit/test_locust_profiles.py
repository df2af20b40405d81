"""The load shapes and request bodies of `loadtests/locustfile.py`. The arithmetic lives in
`loadtests/profiles.py`, tested here in-process; the locustfile itself is imported only in
subprocesses, since importing locust monkey-patches the process with gevent."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.profiles import (
    OPTIONAL_CAPABILITIES,
    PROFILES,
    LoadSettings,
    base_users,
    batch_body,
    failure_message,
    load_texts,
    mixed_body,
    single_body,
    users_at,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HELDOUT = PROJECT_ROOT / "data" / "banking77" / "heldout.csv"


def series(profile: str, peak: int = 32, duration: float = 120, step: float = 1.0) -> list[int]:
    n = int(duration / step)
    return [users_at(profile, i * step, peak, duration) for i in range(n)]


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_stops_after_duration(profile):
    assert users_at(profile, 119.9, 32, 120) is not None
    assert users_at(profile, 120, 32, 120) is None
    assert users_at(profile, 500, 32, 120) is None


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("peak", [1, 3, 8, 32, 100])
def test_every_profile_stays_between_one_user_and_peak(profile, peak):
    values = series(profile, peak, duration=180, step=0.25)
    assert min(values) >= 1
    assert max(values) == peak


def test_steady_ramps_then_holds():
    values = series("steady", peak=32)
    ramp, hold = values[:10], values[10:]
    assert ramp[0] == 1
    assert ramp == sorted(ramp) and len(set(ramp)) == len(ramp)  # strictly rising
    assert ramp[-1] < 32
    assert set(hold) == {32}
    assert users_at("steady", 5, 32, 120) == 16


def test_burst_alternates_between_base_and_peak():
    values = series("burst", peak=32)
    assert set(values) == {base_users(32), 32} == {4, 32}
    # base for 20 s, burst for 10 s, every 30 s
    for start in range(0, 120, 30):
        assert values[start : start + 20] == [4] * 20
        assert values[start + 20 : start + 30] == [32] * 10
    changes = sum(1 for a, b in itertools.pairwise(values) if a != b)
    assert changes == 7  # 4 bursts in 120 s: up, down, up, down, up, down, up


def test_burst_and_wave_base_is_an_eighth_of_peak_but_at_least_one():
    assert base_users(32) == 4
    assert base_users(64) == 8
    assert base_users(4) == 1
    assert base_users(1) == 1


def test_wave_stays_within_bounds_and_oscillates():
    values = series("wave", peak=32, duration=180, step=0.5)
    assert min(values) == 4 and max(values) == 32
    assert users_at("wave", 0, 32, 180) == 4
    assert users_at("wave", 30, 32, 180) == 32
    assert users_at("wave", 60, 32, 180) == 4
    assert users_at("wave", 15, 32, 180) == 18  # halfway up
    # period 60 s: the same value a period later, and three peaks in 180 s
    assert all(users_at("wave", t, 32, 999) == users_at("wave", t + 60, 32, 999) for t in range(60))
    peaks = [i for i, v in enumerate(values) if v == 32 and (i == 0 or values[i - 1] != 32)]
    assert len(peaks) == 3


def test_users_at_rejects_unknown_profile_and_empty_peak():
    with pytest.raises(ValueError, match="steady, burst, wave"):
        users_at("spike", 0, 32, 120)
    with pytest.raises(ValueError, match="at least 1"):
        users_at("steady", 0, 0, 120)


def test_settings_defaults_and_overrides():
    assert LoadSettings.from_env({}) == LoadSettings()
    defaults = LoadSettings.from_env({})
    assert (defaults.profile, defaults.users, defaults.duration_s) == ("steady", 32, 120)
    assert (defaults.batch_size, defaults.wait_s, defaults.api_key) == (16, 0, None)
    assert defaults.headers() == {}

    settings = LoadSettings.from_env(
        {
            "CAPSERVE_PROFILE": " Wave ",
            "CAPSERVE_USERS": "64",
            "CAPSERVE_DURATION_S": "30",
            "CAPSERVE_BATCH_SIZE": "8",
            "CAPSERVE_WAIT_S": "0.5",
            "CAPSERVE_API_KEY": "sk-test",
            "CAPSERVE_WAVE_PERIOD_S": "20",
        }
    )
    assert (settings.profile, settings.users, settings.duration_s) == ("wave", 64, 30)
    assert (settings.batch_size, settings.wait_s) == (8, 0.5)
    assert settings.headers() == {"Authorization": "Bearer sk-test"}
    assert settings.users_at(10) == 64  # half of the 20 s period
    assert settings.users_at(30) is None


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"CAPSERVE_PROFILE": "spike"}, "CAPSERVE_PROFILE"),
        ({"CAPSERVE_USERS": "many"}, "CAPSERVE_USERS"),
        ({"CAPSERVE_USERS": "0"}, "CAPSERVE_USERS"),
        ({"CAPSERVE_BATCH_SIZE": "1.5"}, "CAPSERVE_BATCH_SIZE"),
        ({"CAPSERVE_WAIT_S": "-1"}, "CAPSERVE_WAIT_S"),
        ({"CAPSERVE_BURST_S": "40"}, "CAPSERVE_BURST_S"),
    ],
)
def test_settings_reject_bad_values(env, match):
    with pytest.raises(ValueError, match=match):
        LoadSettings.from_env(env)


def test_texts_come_from_the_heldout_split():
    texts = load_texts(HELDOUT)
    assert len(texts) > 1000
    assert all(isinstance(text, str) and text for text in texts)


def test_request_bodies():
    texts = [f"text {i}" for i in range(50)]
    rng = random.Random(0)
    assert single_body(texts, rng)["texts"][0] in texts
    assert len(single_body(texts, rng)["texts"]) == 1

    batch = batch_body(texts, rng, 16)["texts"]
    assert len(batch) == len(set(batch)) == 16  # distinct: the server would dedupe repeats
    assert len(batch_body(texts[:3], rng, 5)["texts"]) == 5  # fewer texts than asked: repeats

    seen = set()
    for _ in range(50):
        items = mixed_body(texts, rng, 4)["items"]
        assert [item["id"] for item in items] == ["m0", "m1", "m2", "m3"]
        for item in items:
            assert item["text"] in texts
            capabilities = item["capabilities"]
            assert capabilities[0] == "classification"
            assert set(capabilities[1:]) <= set(OPTIONAL_CAPABILITIES)
            seen.add(tuple(capabilities))
    assert len(seen) == 4  # every subset of recommendations/alerts turns up


def test_failure_message():
    ok = json.dumps({"results": [{"label": "a"}, {"label": "b"}]})
    assert failure_message(200, ok, 2) is None
    assert failure_message(200, ok, 3) == "HTTP 200: expected 3 results, got 2"
    assert "not a classification list" in failure_message(200, "<html>", 1)

    error = {
        "error": {
            "message": "texts.1: Input should be a valid string",
            "type": "invalid_request_error",
            "param": "texts.1",
            "code": "validation_error",
        }
    }
    assert failure_message(422, json.dumps(error), 2) == (
        "HTTP 422 validation_error: texts.1: Input should be a valid string"
    )
    assert failure_message(502, "Bad Gateway", 1) == "HTTP 502: Bad Gateway"
    assert failure_message(503, "", 1) == "HTTP 503: no body"


# What locust itself would load: `load_locustfile` is how `locust -f` finds users and shapes.
CHECK_LOCUSTFILE = """
import importlib, inspect, json
from locust import LoadTestShape
from locust.util.load_locustfile import load_locustfile
module = importlib.import_module("loadtests.locustfile")
subclasses = [
    name for name, value in vars(module).items()
    if inspect.isclass(value) and issubclass(value, LoadTestShape) and value is not LoadTestShape
]
users, shapes = load_locustfile(module.__file__)
print(json.dumps({
    "subclasses": subclasses,
    "users": sorted(users),
    "shapes": [type(shape).__name__ for shape in shapes],
    "profile": shapes[0].profile if shapes else None,
    "tick": shapes[0].tick() if shapes else None,
    "texts": len(module.TEXTS),
}))
"""


def import_locustfile(profile: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSERVE_")}
    if profile is not None:
        env["CAPSERVE_PROFILE"] = profile
    return subprocess.run(
        [sys.executable, "-c", CHECK_LOCUSTFILE],
        check=False,
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("profile", "first_users"), [("steady", 1), ("burst", 4), ("wave", 4), (None, 1)]
)
def test_locustfile_exposes_exactly_the_chosen_shape(profile, first_users):
    result = import_locustfile(profile)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    chosen = profile or "steady"
    name = f"{chosen.capitalize()}Shape"
    assert loaded["subclasses"] == ["CapserveShape"]
    assert loaded["shapes"] == [name]
    assert loaded["profile"] == chosen
    assert loaded["users"] == ["ClassifyUser"]
    assert loaded["tick"] == [first_users, 32.0]
    assert loaded["texts"] > 1000


def test_locustfile_refuses_an_unknown_profile():
    result = import_locustfile("spike")
    assert result.returncode != 0
    assert "CAPSERVE_PROFILE='spike' is not a load profile" in result.stderr
