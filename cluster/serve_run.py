"""`serve run CONFIG` on a new local Ray whose Prometheus export is at a fixed address.

Left to itself, `serve run` starts a Ray whose node exports its metrics on a random port. This
starts that Ray first, exporting on `DEFAULT_METRICS_PORT` (8080, the port Ray's docs and KubeRay
use; `CAPSERVE_METRICS_PORT` picks another), then hands over to `serve run`, which deploys on the
Ray it finds running. The rest is as `serve run` has it: Ray's dashboard, and with it the file_sd
target list the shipped Prometheus config reads; Ctrl-C stops the app and Ray.

`capserve serve serve_config.yaml` (what `make run` runs) sets Ray Serve's modes
(cluster/serve_flags.py) and runs this in a fresh interpreter; then
`curl -s 127.0.0.1:8080/metrics | grep capserve_` shows capserve's series (as `ray_capserve_*`:
Ray prefixes them, the shipped scrape config strips the prefix again).
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from pathlib import Path

import ray
from ray.serve.scripts import cli

from deployments.ray_compat import serve_namespace

METRICS_PORT_VARIABLE = "CAPSERVE_METRICS_PORT"
DEFAULT_METRICS_PORT = 8080


def metrics_port(environ: Mapping[str, str] = os.environ) -> int:
    """The port `CAPSERVE_METRICS_PORT` names, `DEFAULT_METRICS_PORT` when unset."""
    value = environ.get(METRICS_PORT_VARIABLE, str(DEFAULT_METRICS_PORT))
    if not value.isdecimal() or not 0 < int(value) < 65536:
        raise ValueError(f"{METRICS_PORT_VARIABLE}={value!r} is not a port number (1-65535)")
    return int(value)


def check_port_free(port: int) -> None:
    """Ray's exporter binds every interface; a port taken there would fail inside Ray's agent,
    far from this command, so it is refused here with what to do instead."""
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
        except OSError as error:
            raise ValueError(
                f"the metrics port {port} is taken ({error.strerror}): stop what holds it "
                f"(another `make run`?) or pick another, e.g. {METRICS_PORT_VARIABLE}=9090"
            ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.serve_run",
        description="`serve run CONFIG` with Ray's metrics export on a fixed port "
        f"({METRICS_PORT_VARIABLE}, default {DEFAULT_METRICS_PORT}).",
    )
    parser.add_argument("config", help="a Serve config file, e.g. serve_config.yaml")
    parser.add_argument("serve_args", nargs=argparse.REMAINDER, help="more `serve run` arguments")
    args = parser.parse_args(argv)
    if not Path(args.config).is_file():
        parser.error(f"no config file {args.config!r}")
    try:
        port = metrics_port()
        check_port_free(port)
    except ValueError as error:
        parser.error(str(error))
    ray.init(address="local", namespace=serve_namespace(), _metrics_export_port=port)
    cli.main(["run", args.config, *args.serve_args], prog_name="serve")


if __name__ == "__main__":
    main()
