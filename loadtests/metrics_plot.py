"""The Grafana dashboard's main panels over a run of mixed load, plotted from what a real Prometheus
scraped off the app.

    .venv/bin/python loadtests/metrics_plot.py [--rates 4,10,16] [--step-seconds 60]

The default app starts in its own Ray, with the result cache on and with Ray's dashboard, which
keeps Ray's Prometheus file_sd list of nodes; Prometheus runs with
cluster/monitoring/prometheus.yml, reading that list from this Ray session's folder. The load is
the soak's mix (classify singles, 16-text batches, mixed items, every capability, embeddings) on an
open loop whose rate steps through `--rates`, one step every `--step-seconds`, plus one Batch API
job of `--batch-lines` lines at the start of the second step. Texts come from a pool of
`--text-pool` Banking77 texts, so repeats make the cache hit rate climb. Then the panels' own
queries (from cluster/monitoring/grafana-dashboard.json) are read back with `query_range` and
drawn to loadtests/results/metrics.png, with the series in metrics.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
from pydantic import BaseModel

# Run as a script: the project's packages sit beside this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.monitoring.prometheus_server import PrometheusClient, RangeSeries, prometheus_server
from cluster.processes import free_port
from deployments.ray_compat import session_dir
from loadtests.apps import PROJECT_ROOT, default_app, running_app, use_app_environment
from loadtests.profiles import load_texts
from loadtests.soak import (
    REQUEST_TIMEOUT_S,
    BatchJobReport,
    Tally,
    batch_job,
    open_loop,
    wait_ready,
)

DASHBOARD = PROJECT_ROOT / "cluster" / "monitoring" / "grafana-dashboard.json"
# Panel title -> refIds of the queries plotted, None for all: p99 of the few requests of a
# window is one request's latency.
PLOTTED_PANELS: dict[str, tuple[str, ...] | None] = {
    "Request rate by endpoint and status": None,
    "Latency by endpoint (p50, p95, p99)": ("A", "B"),
    "Engine queue depth": None,
    "Mean capability batch size": None,
    "Cache hit rate": None,
    "Engine calls and mean engine batch size": None,
}
# The endpoints the load is made of; /readyz and the Batch API's few calls would crowd legends.
PLOTTED_ENDPOINTS = {"/v1/classify", "/v1/embeddings"}
# Ray exports every 10 s, so counters rise in steps; rates over a window of six exports do not
# alias those steps into a sawtooth, as Grafana's $__rate_interval at this step (20 s) does.
RATE_WINDOW = "1m"
STEP_S = 5
# One Ray export and one scrape after the last request, so the last values are in.
SETTLE_S = 20
SD_FILE_TIMEOUT_S = 60
RAY_SD_FILE_NAME = "prom_metrics_service_discovery.json"
UNITS = {"reqps": "requests/s", "s": "ms", "percentunit": "%", "short": "", "ops": "per s"}
SCALES = {"s": 1000.0, "percentunit": 100.0}


class PlottedTarget(BaseModel):
    expr: str
    legend: str
    series: list[RangeSeries]


class PlottedPanel(BaseModel):
    title: str
    unit: str
    targets: list[PlottedTarget]


class LoadStep(BaseModel):
    requests_per_s: float
    started_s: float
    sent: int
    answered: int
    errors: int


class LoadRun(BaseModel):
    start: float
    steps: list[LoadStep]
    batch_job: BatchJobReport | None
    first_errors: list[str]


class MetricsRun(BaseModel):
    command: str
    machine: str
    end: float
    step_s: float
    rate_window: str
    load: LoadRun
    panels: list[PlottedPanel]


class PlotSettings(BaseModel):
    rates: list[float]
    step_s: float
    batch_lines: int
    text_pool: int
    out: Path


# --- load --------------------------------------------------------------------------------------


async def drive_load(base_url: str, texts: Sequence[str], settings: PlotSettings) -> LoadRun:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as http:
        await wait_ready(http)
        sdk = openai.AsyncOpenAI(
            base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
        )
        started = time.time()
        steps: list[LoadStep] = []
        job: asyncio.Task[BatchJobReport] | None = None
        jobs_tally, first_errors = Tally(), []
        for index, rate in enumerate(settings.rates):
            if index == 1:
                job_texts = random.Random(2).sample(list(texts), settings.batch_lines)
                job = asyncio.create_task(batch_job(sdk, job_texts, "metrics", jobs_tally))
            tally, step_started = Tally(), time.time() - started
            print(f"{step_started:5.0f} s: {rate:g} requests/s", flush=True)
            result = await open_loop(http, texts, rate, settings.step_s, tally)
            steps.append(
                LoadStep(
                    requests_per_s=rate,
                    started_s=round(step_started, 1),
                    sent=result.sent,
                    answered=tally.answered,
                    errors=tally.error_count,
                )
            )
            first_errors += tally.first_errors
        report = await job if job is not None else None
    return LoadRun(
        start=started,
        steps=steps,
        batch_job=report,
        first_errors=first_errors + jobs_tally.first_errors,
    )


# --- Prometheus --------------------------------------------------------------------------------


def ray_sd_file() -> Path:
    """This Ray session's file_sd list, which Ray's dashboard writes once it is up."""
    # Ray writes the list into its session folder; /tmp/ray's copy follows the newest session on
    # the machine, which may be someone else's.
    sd_file = Path(session_dir()) / RAY_SD_FILE_NAME
    deadline = time.monotonic() + SD_FILE_TIMEOUT_S
    while not sd_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray wrote no {sd_file} within {SD_FILE_TIMEOUT_S} s")
        time.sleep(1)
    return sd_file


def panel_queries(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The plotted panels of the dashboard, each with only its plotted queries."""
    panels = {panel["title"]: panel for panel in dashboard["panels"]}
    return [
        {
            **panels[title],
            "targets": [
                target
                for target in panels[title]["targets"]
                if ref_ids is None or target["refId"] in ref_ids
            ],
        }
        for title, ref_ids in PLOTTED_PANELS.items()
    ]


def plotted_series(series: list[RangeSeries]) -> list[RangeSeries]:
    """`series` less those of endpoints the load does not exercise."""
    return [
        one
        for one in series
        if "endpoint" not in one.metric or one.metric["endpoint"] in PLOTTED_ENDPOINTS
    ]


def read_panels(
    prometheus: PrometheusClient, panels: list[dict[str, Any]], start: float, end: float
) -> list[PlottedPanel]:
    return [
        PlottedPanel(
            title=panel["title"],
            unit=panel["fieldConfig"]["defaults"]["unit"],
            targets=[
                PlottedTarget(
                    expr=(expr := target["expr"].replace("$__rate_interval", RATE_WINDOW)),
                    legend=target["legendFormat"],
                    series=plotted_series(prometheus.query_range(expr, start, end, STEP_S)),
                )
                for target in panel["targets"]
            ],
        )
        for panel in panels
    ]


# --- plot --------------------------------------------------------------------------------------


def legend(template: str, labels: dict[str, str]) -> str:
    for name, value in labels.items():
        template = template.replace(f"{{{{{name}}}}}", value)
    return template


def plot(run: MetricsRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2
    rows = math.ceil(len(run.panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(14, 4 * rows), squeeze=False)
    for axis, panel in zip(axes.flat, run.panels, strict=False):
        scale = SCALES.get(panel.unit, 1.0)
        for target in panel.targets:
            for series in target.series:
                seconds = [timestamp - run.load.start for timestamp, _ in series.values]
                values = [float(value) * scale for _, value in series.values]
                axis.plot(seconds, values, label=legend(target.legend, series.metric), lw=1.2)
        for step in run.load.steps:
            axis.axvline(step.started_s, color="grey", lw=0.6, ls="--")
            axis.annotate(
                f"{step.requests_per_s:g}/s",
                (step.started_s, 1),
                xycoords=("data", "axes fraction"),
                xytext=(3, -10),
                textcoords="offset points",
                fontsize=7,
                color="grey",
            )
        axis.set_title(panel.title, fontsize=10)
        axis.set_xlabel("seconds since the load started", fontsize=8)
        axis.set_ylabel(UNITS.get(panel.unit, panel.unit), fontsize=8)
        axis.set_ylim(bottom=0)
        axis.tick_params(labelsize=7)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="best")
    for axis in axes.flat[len(run.panels) :]:
        axis.set_visible(False)
    figure.suptitle(
        f"capserve, scraped by Prometheus every 5 s (rates over {run.rate_window}); "
        f"open-loop mix at {', '.join(f'{s.requests_per_s:g}' for s in run.load.steps)} requests/s",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- the run -----------------------------------------------------------------------------------


def parse_settings() -> PlotSettings:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="4,10,16", help="requests/s of each step, commas")
    parser.add_argument("--step-seconds", type=float, default=60, help="seconds of each step")
    parser.add_argument("--batch-lines", type=int, default=200, help="lines of the batch job")
    parser.add_argument("--text-pool", type=int, default=1500, help="distinct texts to draw")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "loadtests" / "results")
    arguments = parser.parse_args()
    try:
        rates = [float(rate) for rate in arguments.rates.split(",")]
    except ValueError:
        parser.error(f"--rates must be numbers separated by commas, got {arguments.rates!r}")
    if not rates or min(rates) <= 0 or arguments.step_seconds <= 0:
        parser.error("--rates and --step-seconds must be above 0")
    if arguments.batch_lines < 1 or arguments.text_pool < arguments.batch_lines:
        parser.error("--batch-lines must be at least 1 and at most --text-pool")
    return PlotSettings(
        rates=rates,
        step_s=arguments.step_seconds,
        batch_lines=arguments.batch_lines,
        text_pool=arguments.text_pool,
        out=arguments.out,
    )


def main() -> None:
    settings = parse_settings()
    use_app_environment()
    texts = load_texts(PROJECT_ROOT / "data" / "banking77" / "heldout.csv")[: settings.text_pool]
    panels = panel_queries(json.loads(DASHBOARD.read_text()))
    with tempfile.TemporaryDirectory(prefix="capserve-metrics-") as cache_dir:
        app = default_app(cache_dir)
        ray_options = {
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(),
            "_metrics_export_port": free_port(),
        }
        with (
            running_app("capserve-metrics", app, **ray_options) as base_url,
            prometheus_server(ray_sd_file()) as prometheus,
        ):
            load = asyncio.run(drive_load(base_url, texts, settings))
            time.sleep(SETTLE_S)
            end = time.time()
            run = MetricsRun(
                command="python loadtests/metrics_plot.py " + " ".join(sys.argv[1:]),
                machine=f"{platform.machine()}, {os.cpu_count()} cores",
                end=end,
                step_s=STEP_S,
                rate_window=RATE_WINDOW,
                load=load,
                panels=read_panels(prometheus, panels, load.start, end),
            )
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "metrics.json").write_text(run.model_dump_json(indent=1) + "\n")
    plot(run, settings.out / "metrics.png")
    for step in run.load.steps:
        print(step.model_dump_json(), flush=True)
    for error in run.load.first_errors:
        print(f"ERROR {error}", flush=True)
    print(f"wrote {settings.out / 'metrics.png'} and metrics.json", flush=True)


if __name__ == "__main__":
    main()
