"""The one switch of Ray Serve's high-throughput modes, and the manifests that spell it out."""

from itertools import count
from pathlib import Path

import pytest
import yaml

from cluster.serve_flags import (
    DEFAULT_FLAGS,
    HAPROXY_PORT_VARIABLES,
    RAY_FLAGS,
    parse_flags,
    ray_env,
    selected_flags,
)

KUBERAY = Path(__file__).resolve().parents[2] / "cluster" / "kuberay"


def test_flags_are_named_comma_separated():
    assert parse_flags("") == frozenset()
    assert parse_flags(" haproxy, throughput ,") == {"haproxy", "throughput"}


def test_an_unknown_flag_fails_rather_than_serving_the_other_way():
    with pytest.raises(ValueError, match=r"unknown \['fast'\]"):
        parse_flags("haproxy,fast")


def test_unset_means_the_default():
    assert selected_flags({}) == parse_flags(DEFAULT_FLAGS)
    assert selected_flags({"CAPSERVE_SERVE_FLAGS": "throughput"}) == {"throughput"}


def test_every_ray_flag_is_set_on_or_off():
    assert ray_env(frozenset()) == {
        "RAY_SERVE_ENABLE_HA_PROXY": "0",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
    }
    assert ray_env(frozenset({"haproxy", "throughput"})) == {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    }


def test_haproxy_mode_gets_free_ports_of_its_own_only_when_asked():
    ports = count(40100)
    env = ray_env(frozenset({"haproxy"}), lambda: next(ports))
    assert [env[variable] for variable in HAPROXY_PORT_VARIABLES] == [
        "40100",
        "40101",
        "40102",
        "40103",
    ]
    assert ray_env(frozenset({"throughput"}), lambda: next(ports)).keys() == set(RAY_FLAGS.values())
    assert ray_env(frozenset({"haproxy"})).keys() == set(RAY_FLAGS.values())


def _containers(node: object) -> list[dict]:
    """Every Ray container (head and workers) anywhere in a manifest."""
    if isinstance(node, dict):
        found = [node] if str(node.get("image", "")).startswith("rayproject/ray") else []
        return found + [c for value in node.values() for c in _containers(value)]
    if isinstance(node, list):
        return [c for item in node for c in _containers(item)]
    return []


@pytest.mark.parametrize("manifest", ["rayservice.yaml", "rayjob.yaml"])
def test_kuberay_containers_run_the_default_modes(manifest: str):
    containers = _containers(list(yaml.safe_load_all((KUBERAY / manifest).read_text())))
    assert {container["name"] for container in containers} == {"ray-head", "ray-worker"}
    for container in containers:
        env = {item["name"]: item["value"] for item in container["env"]}
        assert env == ray_env(parse_flags(DEFAULT_FLAGS)), container["name"]
