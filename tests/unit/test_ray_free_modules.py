"""The logic a client, CLI or unit test needs imports without Ray or vLLM, and every private Ray
API sits in one module that names the Ray it was written against."""

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import ray

from deployments.ray_compat import PINNED_RAY_VERSION

RAY_FREE = [
    "capabilities.host",
    "capabilities.batching",
    "batchjobs.executor",
    "deployments.config",
    "deployments.http.auth",
    "deployments.http.rate_limit",
    "deployments.http.errors",
    "deployments.http.schemas",
    "deployments.http.openai_api",
    "deployments.http.request_body",
    "deployments.http.openapi",
    "deployments.http.api_docs",
    "deployments.calls.circuit_breaker",
    "deployments.engine.calls",
    "deployments.engine.choice_tokens",
    "deployments.engine.choice_probabilities",
]


@pytest.mark.parametrize("module", RAY_FREE)
def test_imports_without_ray_or_vllm(module: str, project_root: Path) -> None:
    script = textwrap.dedent(
        f"""
        import importlib, sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("ray", "vllm"):
                    raise ImportError(f"{{name}} is not installed here")

        sys.meta_path.insert(0, Refuse())
        importlib.import_module({module!r})
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=project_root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]


def test_the_private_ray_apis_were_written_against_the_pinned_ray(project_root: Path) -> None:
    assert ray.__version__ == PINNED_RAY_VERSION
    project = tomllib.loads((project_root / "pyproject.toml").read_text())["project"]
    assert f"ray[serve]=={PINNED_RAY_VERSION}" in project["dependencies"]


def test_no_other_module_reaches_into_rays_private_apis(project_root: Path) -> None:
    offenders = [
        str(path.relative_to(project_root))
        for folder in ("capabilities", "batchjobs", "deployments", "cluster", "loadtests")
        for path in (project_root / folder).rglob("*.py")
        if path.name != "ray_compat.py"
        and any(
            marker in path.read_text()
            for marker in ("ray._private", "_get_global_client", "_fetch_future_result_async")
        )
    ]
    assert offenders == []
