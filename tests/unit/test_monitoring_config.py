"""The shipped monitoring files: the Prometheus scrape config and the Grafana dashboard.

Where Debian's prometheus package is installed (`make services`), promtool checks the scrape
config and parses every dashboard query as a recording rule; the end-to-end test
tests/e2e/test_prometheus.py runs them against the real app.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.monitoring.prometheus_server import SCRAPE_CONFIG

DASHBOARD = SCRAPE_CONFIG.with_name("grafana-dashboard.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
HISTOGRAMS = [
    "capserve_http_request_duration_seconds",
    "capserve_capability_batch_size",
    "capserve_engine_batch_size",
]
CAPSERVE_METRICS = {
    "capserve_http_requests_total",
    "capserve_capability_runs_total",
    "capserve_capability_texts_total",
    "capserve_cache_lookups_total",
    "capserve_engine_requests_total",
    "capserve_engine_queue_depth",
    "capserve_engine_tokens_total",
    "capserve_batch_lines_total",
    "capserve_batches_total",
    "capserve_batches_in_progress",
} | {f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
# Grafana fills these in before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}
PAIRS = {"(": ")", "[": "]", "{": "}"}
STRING = re.compile(r'"(?:\\.|[^"\\])*"')


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _targets() -> list[dict[str, Any]]:
    return [target for panel in _dashboard()["panels"] for target in panel["targets"]]


def _promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def _is_balanced(expr: str) -> bool:
    closers: list[str] = []
    for char in STRING.sub('""', expr):
        if char in PAIRS:
            closers.append(PAIRS[char])
        elif char in PAIRS.values() and (not closers or closers.pop() != char):
            return False
    return not closers


def _promtool() -> str | None:
    """promtool, which every machine with Prometheus installed must have."""
    promtool = shutil.which("promtool")
    if promtool is None and shutil.which("prometheus") is not None:
        pytest.fail("prometheus is installed without promtool; reinstall it with `make services`")
    return promtool


def test_the_dashboard_has_a_prometheus_datasource_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    [variable] = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_every_panel_and_query_reads_the_datasource_variable() -> None:
    for panel in _dashboard()["panels"]:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"])


def test_every_query_reads_only_known_metrics() -> None:
    known = CAPSERVE_METRICS | {"up"}
    for target in _targets():
        names = set(re.findall(r"\b(?:capserve|ray)_[a-z0-9_]+|\bup\b", target["expr"]))
        assert names, f"{target['expr']} reads no metric"
        unknown = {name for name in names if name not in known and not name.startswith("ray_")}
        assert not unknown, f"{target['expr']} reads unknown metrics {unknown}"


def test_no_query_reads_a_histogram_sum() -> None:
    # Ray 2.60 rebuilds a histogram's _sum from bucket midpoints (a batch of 1 counts as 0.5), so
    # means come from counters; _count and _bucket are exact.
    for target in _targets():
        assert not re.search(r"capserve_\w+_sum\b", target["expr"]), target["expr"]


def test_every_query_has_balanced_brackets() -> None:
    for target in _targets():
        assert _is_balanced(target["expr"]), target["expr"]


def test_the_dashboard_shows_every_capserve_metric() -> None:
    shown = {name for target in _targets() for name in re.findall(r"capserve_\w+", target["expr"])}
    metrics = {name for name in CAPSERVE_METRICS if not name.startswith(tuple(HISTOGRAMS))}
    missing = [
        metric
        for metric in [*metrics, *HISTOGRAMS]
        if not any(name.startswith(metric) for name in shown)
    ]
    assert not missing, f"no panel shows {missing}"


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool is not installed (`make services` installs it)")
    rules = [
        {"record": f"capserve:panel_query:{index}", "expr": _promql(target["expr"])}
        for index, target in enumerate(_targets())
    ]
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_scrape_config_finds_ray_nodes_and_renames_capserve_series() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "5s"
    [job] = config["scrape_configs"]
    assert job["file_sd_configs"] == [{"files": ["/tmp/ray/prom_metrics_service_discovery.json"]}]
    [rule] = job["metric_relabel_configs"]
    assert rule["source_labels"] == ["__name__"] and rule["target_label"] == "__name__"

    def relabel(name: str) -> str:
        # Prometheus anchors relabel regexes at both ends and writes groups as $1.
        match = re.fullmatch(rule["regex"], name)
        return match.expand(rule["replacement"].replace("$1", r"\1")) if match else name

    assert relabel("ray_capserve_http_requests_total") == "capserve_http_requests_total"
    assert relabel("ray_serve_num_http_requests_total") == "ray_serve_num_http_requests_total"
    assert relabel("ray_node_cpu_utilization") == "ray_node_cpu_utilization"


def test_promtool_accepts_the_scrape_config() -> None:
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool is not installed (`make services` installs it)")
    checked = subprocess.run(
        [promtool, "check", "config", str(SCRAPE_CONFIG)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_metrics_plot_draws_panels_of_the_dashboard() -> None:
    from loadtests.metrics_plot import PLOTTED_PANELS, panel_queries

    panels = panel_queries(_dashboard())
    assert [panel["title"] for panel in panels] == list(PLOTTED_PANELS)
    assert all(panel["targets"] for panel in panels)
