"""The arithmetic and request bodies behind `loadtests/locustfile.py`, kept free of locust so it
can be unit-tested without gevent's monkey-patching: the three load shapes (`users_at`), the
settings read from the environment (`LoadSettings.from_env`), the request bodies and the check
that turns a response into a failure message.

Profiles, for a peak of P users over D seconds (every profile stops, `None`, from t = D on):

  steady  ramp linearly from 1 to P over `ramp_s` (10 s), then hold P;
  burst   hold a base of P/8 and jump to P for the last `burst_s` (10 s) of every
          `burst_every_s` (30 s): base over [0, 20), burst over [20, 30), base over [30, 50), ...;
  wave    a sinusoid between P/8 (at t = 0) and P (at half a period), period `wave_period_s` (60 s).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROFILES = ("steady", "burst", "wave")
OPTIONAL_CAPABILITIES = ("recommendations", "alerts")

DEFAULT_PROFILE = "steady"
DEFAULT_USERS = 32
DEFAULT_DURATION_S = 120.0
DEFAULT_BATCH_SIZE = 16
DEFAULT_MIXED_ITEMS = 4
DEFAULT_WAIT_S = 0.0
DEFAULT_RAMP_S = 10.0
DEFAULT_BURST_EVERY_S = 30.0
DEFAULT_BURST_S = 10.0
DEFAULT_WAVE_PERIOD_S = 60.0


def base_users(peak: int) -> int:
    """The low level of burst and wave: an eighth of the peak, at least one user."""
    return max(1, round(peak / 8))


def steady_users(t: float, peak: int, ramp_s: float = DEFAULT_RAMP_S) -> int:
    if ramp_s <= 0 or t >= ramp_s:
        return peak
    return max(1, math.ceil(peak * t / ramp_s))


def burst_users(
    t: float,
    peak: int,
    every_s: float = DEFAULT_BURST_EVERY_S,
    burst_s: float = DEFAULT_BURST_S,
) -> int:
    in_burst = (t % every_s) >= every_s - burst_s
    return peak if in_burst else base_users(peak)


def wave_users(t: float, peak: int, period_s: float = DEFAULT_WAVE_PERIOD_S) -> int:
    low = base_users(peak)
    level = (1 - math.cos(2 * math.pi * t / period_s)) / 2  # 0 at t = 0, 1 at half a period
    return min(peak, max(low, round(low + (peak - low) * level)))


def users_at(
    profile: str,
    t: float,
    peak: int,
    duration: float,
    *,
    ramp_s: float = DEFAULT_RAMP_S,
    burst_every_s: float = DEFAULT_BURST_EVERY_S,
    burst_s: float = DEFAULT_BURST_S,
    wave_period_s: float = DEFAULT_WAVE_PERIOD_S,
) -> int | None:
    """How many users `profile` wants `t` seconds into the run; `None` once `duration` is over."""
    if profile not in PROFILES:
        raise ValueError(f"unknown load profile {profile!r}; expected one of {', '.join(PROFILES)}")
    if peak < 1:
        raise ValueError(f"peak users must be at least 1, got {peak}")
    if t >= duration:
        return None
    t = max(0.0, t)
    if profile == "steady":
        return steady_users(t, peak, ramp_s)
    if profile == "burst":
        return burst_users(t, peak, burst_every_s, burst_s)
    return wave_users(t, peak, wave_period_s)


def spawn_rate(peak: int) -> float:
    """Users started (or stopped) per second: fast enough to reach any target within a tick
    (locust asks the shape once a second), so the target itself carries the shape."""
    return float(max(1, peak))


def _env_number(env: Mapping[str, str], name: str, default: float, cast: type, minimum: float):
    raw = env.get(name, "").strip()
    if not raw:
        return cast(default)
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {cast.__name__}") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class LoadSettings:
    profile: str = DEFAULT_PROFILE
    users: int = DEFAULT_USERS
    duration_s: float = DEFAULT_DURATION_S
    batch_size: int = DEFAULT_BATCH_SIZE
    mixed_items: int = DEFAULT_MIXED_ITEMS
    wait_s: float = DEFAULT_WAIT_S
    api_key: str | None = None
    ramp_s: float = DEFAULT_RAMP_S
    burst_every_s: float = DEFAULT_BURST_EVERY_S
    burst_s: float = DEFAULT_BURST_S
    wave_period_s: float = DEFAULT_WAVE_PERIOD_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoadSettings:
        env = os.environ if env is None else env
        profile = env.get("CAPSERVE_PROFILE", "").strip().lower() or DEFAULT_PROFILE
        if profile not in PROFILES:
            raise ValueError(
                f"CAPSERVE_PROFILE={profile!r} is not a load profile; "
                f"expected one of {', '.join(PROFILES)}"
            )
        burst_every_s = _env_number(env, "CAPSERVE_BURST_EVERY_S", DEFAULT_BURST_EVERY_S, float, 1)
        burst_s = _env_number(env, "CAPSERVE_BURST_S", DEFAULT_BURST_S, float, 0)
        if burst_s > burst_every_s:
            raise ValueError(
                f"CAPSERVE_BURST_S={burst_s} must not exceed CAPSERVE_BURST_EVERY_S={burst_every_s}"
            )
        return cls(
            profile=profile,
            users=_env_number(env, "CAPSERVE_USERS", DEFAULT_USERS, int, 1),
            duration_s=_env_number(env, "CAPSERVE_DURATION_S", DEFAULT_DURATION_S, float, 1),
            batch_size=_env_number(env, "CAPSERVE_BATCH_SIZE", DEFAULT_BATCH_SIZE, int, 1),
            mixed_items=_env_number(env, "CAPSERVE_MIXED_ITEMS", DEFAULT_MIXED_ITEMS, int, 1),
            wait_s=_env_number(env, "CAPSERVE_WAIT_S", DEFAULT_WAIT_S, float, 0),
            api_key=env.get("CAPSERVE_API_KEY", "").strip() or None,
            ramp_s=_env_number(env, "CAPSERVE_RAMP_S", DEFAULT_RAMP_S, float, 0),
            burst_every_s=burst_every_s,
            burst_s=burst_s,
            wave_period_s=_env_number(
                env, "CAPSERVE_WAVE_PERIOD_S", DEFAULT_WAVE_PERIOD_S, float, 1
            ),
        )

    def users_at(self, t: float) -> int | None:
        return users_at(
            self.profile,
            t,
            self.users,
            self.duration_s,
            ramp_s=self.ramp_s,
            burst_every_s=self.burst_every_s,
            burst_s=self.burst_s,
            wave_period_s=self.wave_period_s,
        )

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def load_texts(path: Path) -> list[str]:
    """The non-empty `text` column of a CSV."""
    with path.open(newline="", encoding="utf-8") as f:
        texts = [row["text"].strip() for row in csv.DictReader(f)]
    texts = [text for text in texts if text]
    if not texts:
        raise ValueError(f"{path} has no texts in its `text` column")
    return texts


def pick(texts: Sequence[str], rng: random.Random, n: int) -> list[str]:
    """n texts, distinct when there are enough (repeats would be deduplicated by the server)."""
    return rng.sample(list(texts), n) if n <= len(texts) else rng.choices(texts, k=n)


def single_body(texts: Sequence[str], rng: random.Random) -> dict[str, Any]:
    return {"texts": [rng.choice(texts)]}


def batch_body(texts: Sequence[str], rng: random.Random, n: int) -> dict[str, Any]:
    return {"texts": pick(texts, rng, n)}


def mixed_body(texts: Sequence[str], rng: random.Random, n: int) -> dict[str, Any]:
    """Items that each ask for classification plus a random subset of recommendations/alerts."""
    items = []
    for i, text in enumerate(pick(texts, rng, n)):
        extra = [name for name in OPTIONAL_CAPABILITIES if rng.random() < 0.5]
        items.append({"id": f"m{i}", "text": text, "capabilities": ["classification", *extra]})
    return {"items": items}


def failure_message(status: int, body: str | None, expected_results: int) -> str | None:
    """None for a good answer; otherwise what went wrong, with the server's JSON error message."""
    if not 200 <= status < 300:
        try:
            error = json.loads(body or "")["error"]
            code = f" {error['code']}" if error.get("code") else ""
            return f"HTTP {status}{code}: {error['message']}"
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"HTTP {status}: {(body or '').strip()[:200] or 'no body'}"
    try:
        results = json.loads(body or "")["results"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: answer is not a classification list: {(body or '')[:200]!r}"
    if len(results) != expected_results:
        return f"HTTP {status}: expected {expected_results} results, got {len(results)}"
    return None
