"""`make run`'s launcher: Ray's metrics export on a fixed port, and the docs that name it.

tests/e2e/test_make_run_metrics.py runs `make run`'s recipe and scrapes that port."""

import re
import socket
from pathlib import Path

import pytest

from cluster.serve_run import (
    DEFAULT_METRICS_PORT,
    METRICS_PORT_VARIABLE,
    check_port_free,
    main,
    metrics_port,
)


def test_the_port_is_fixed_unless_the_variable_moves_it() -> None:
    assert metrics_port({}) == DEFAULT_METRICS_PORT == 8080
    assert metrics_port({METRICS_PORT_VARIABLE: "9090"}) == 9090


@pytest.mark.parametrize("value", ["", "abc", "0", "65536", "-1", "80.5"])
def test_a_port_that_is_no_port_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match=f"{METRICS_PORT_VARIABLE}='{re.escape(value)}'"):
        metrics_port({METRICS_PORT_VARIABLE: value})


def test_a_taken_port_is_refused_with_what_to_do() -> None:
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ValueError, match=rf"port {port} is taken.*{METRICS_PORT_VARIABLE}="):
            check_port_free(port)
    check_port_free(port)


def test_bad_input_exits_2_before_ray_starts(
    project_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["no-such-config.yaml"])
    assert exited.value.code == 2
    assert "no config file 'no-such-config.yaml'" in capsys.readouterr().err

    monkeypatch.setenv(METRICS_PORT_VARIABLE, "http")
    with pytest.raises(SystemExit) as exited:
        main([str(project_root / "serve_config.yaml")])
    assert exited.value.code == 2
    assert f"{METRICS_PORT_VARIABLE}='http' is not a port number" in capsys.readouterr().err


def test_make_run_runs_it_through_capserve_serve(project_root: Path) -> None:
    """`make run` is `capserve serve`, which runs this module (tests/unit/test_cli.py)."""
    makefile = (project_root / "Makefile").read_text()
    [recipe] = re.findall(r"^run:.*\n\t(.*)", makefile, re.MULTILINE)
    assert recipe.endswith("-m capserve serve serve_config.yaml")


def test_the_readmes_metrics_section_starts_with_the_command_on_that_port(
    project_root: Path,
) -> None:
    readme = (project_root / "README.md").read_text()
    section = readme.split("\n### Metrics\n", 1)[1]
    first_paragraph = section.strip().split("\n\n", 1)[0]
    command = f"curl -s 127.0.0.1:{DEFAULT_METRICS_PORT}/metrics | grep capserve_"
    assert f"```bash\n{command}\n```" in first_paragraph
