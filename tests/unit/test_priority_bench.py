"""The priority benchmark's pure parts (`loadtests/priority_bench.py`): its variants are valid
settings of the default app's model, and its table has a row per variant."""

from __future__ import annotations

import pytest

from deployments.config import parse_app_config
from loadtests.apps import default_app
from loadtests.priority_bench import VARIANTS, model_settings, report


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_is_a_valid_setting_of_the_default_model(variant: str, tmp_path) -> None:
    app = default_app(str(tmp_path))
    [model] = app["args"]["models"]
    for section, settings in model_settings(variant).items():
        model[section] = {**model.get(section, {}), **settings}
    [parsed] = parse_app_config(app["args"]).models
    expected = {
        "fcfs": ("fcfs", None),
        "priority": ("priority", None),
        "default": ("priority", 2),
        "cap=4": ("priority", 4),
    }[variant]
    assert (
        parsed.engine_args.scheduling_policy,
        parsed.priority.low_in_flight_while_online,
    ) == expected


@pytest.mark.parametrize("variant", ["cap=0", "cap=x", "strict"])
def test_unknown_variants_are_refused(variant: str) -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        model_settings(variant)


def test_the_table_has_a_row_per_variant() -> None:
    run = {
        "online_alone": {"p50_ms": 20.0, "p95_ms": 30.0, "errors": 0},
        "online_with_batch": {"p50_ms": 25.0, "p95_ms": 40.0, "errors": 1},
        "p95_ratio": 1.33,
        "batch": {"lines_per_s": 120.0, "status": "completed", "output_lines": 100},
    }
    results = {
        "command": "python loadtests/priority_bench.py",
        "machine": "x86_64, 2 cores",
        "serve_flags": "haproxy,throughput",
        "seconds": 600,
        "online_rate": 10.0,
        "lines": 100,
        "runs": [{**run, "variant": "fcfs"}, {**run, "variant": "default"}],
    }
    table = report(results)
    assert "| fcfs | 20.0 / 30.0 | 25.0 / 40.0 | 1.33 | 1 | 120.0 | completed, 100 lines |" in table
    assert "| default |" in table
