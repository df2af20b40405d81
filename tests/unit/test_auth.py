"""API keys: config and the key check's 401/403 answers."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from capserve.keys import key_hash, new_key
from deployments.http.auth import ANONYMOUS, ApiKey, AuthConfig, Authenticator
from deployments.http.errors import AuthenticationError, PermissionDeniedError

KEY = "sk-capserve-test"


def new_entry(name: str, scopes: list[str]) -> ApiKey:
    _, entry = new_key(name, scopes)
    return ApiKey.model_validate(entry.model_dump())


def authenticator(*scopes: str) -> Authenticator:
    return Authenticator([ApiKey(name="team-a", sha256=key_hash(KEY), scopes=list(scopes))])


def test_with_no_keys_everyone_is_the_anonymous_principal() -> None:
    assert Authenticator([]).authenticate(None, "admin") is ANONYMOUS
    assert ANONYMOUS.tenant is None


def test_public_routes_need_no_key() -> None:
    assert authenticator("classify").authenticate(None, "public") is ANONYMOUS


@pytest.mark.parametrize("header", [None, "", "Bearer ", "Basic abc", KEY, "Bearer wrong"])
def test_a_missing_or_wrong_key_is_401(header: str | None) -> None:
    with pytest.raises(AuthenticationError) as raised:
        authenticator("classify").authenticate(header, "classify")
    assert raised.value.status_code == 401
    assert raised.value.headers() == {"WWW-Authenticate": 'Bearer realm="capserve"'}
    assert KEY not in raised.value.message


def test_a_key_without_the_scope_is_403_naming_it() -> None:
    with pytest.raises(PermissionDeniedError) as raised:
        authenticator("classify").authenticate(f"Bearer {KEY}", "batch")
    assert raised.value.status_code == 403
    assert "'batch'" in raised.value.message and "team-a" in raised.value.message


def test_a_valid_key_is_its_holder() -> None:
    principal = authenticator("classify", "batch").authenticate(f"bearer  {KEY} ", "batch")
    assert (principal.name, principal.tenant) == ("team-a", "team-a")
    assert principal.scopes == {"classify", "batch"}
    assert authenticator("batch").authenticate(f"Bearer {KEY}", "any_key").name == "team-a"


def test_keys_come_from_config_and_file(tmp_path: Path) -> None:
    in_config = new_entry("team-a", ["classify"])
    in_file = new_entry("team-b", ["batch"])
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"api_keys": [in_file.model_dump()]}))
    config = AuthConfig(api_keys=[in_config], api_keys_file=path)
    assert [key.name for key in config.all_keys()] == ["team-a", "team-b"]


def test_a_key_listed_twice_is_refused() -> None:
    entry = new_entry("team-a", ["classify"])
    with pytest.raises(ValidationError, match="appears twice"):
        AuthConfig(api_keys=[entry, entry.model_copy(update={"name": "team-b"})])


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot read"), ("api_keys: [{name: x}]", "sha256"), ("{", "not YAML")],
)
def test_a_bad_keys_file_names_the_problem(tmp_path: Path, content: str | None, problem: str):
    path = tmp_path / "keys.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValidationError, match=problem):
        AuthConfig(api_keys_file=path)


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "a", "sha256": "short", "scopes": ["classify"]},
        {"name": "a", "sha256": "0" * 64, "scopes": []},
        {"name": "a", "sha256": "0" * 64, "scopes": ["root"]},
        {"name": "a b", "sha256": "0" * 64, "scopes": ["classify"]},
    ],
)
def test_bad_key_entries_are_refused(entry: dict) -> None:
    with pytest.raises(ValidationError):
        ApiKey.model_validate(entry)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LocalHost."]
)
def test_without_keys_a_loopback_host_serves_anonymously(host: str) -> None:
    assert AuthConfig().exposure_problem(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "capserve.internal", ""])
def test_without_keys_a_host_the_network_reaches_is_refused(host: str) -> None:
    problem = AuthConfig().exposure_problem(host)
    assert problem is not None
    assert f"http_options.host {host!r} is reachable from the network" in problem
    assert "auth.api_keys_file" in problem and "auth.allow_anonymous: true" in problem


def test_keys_or_an_explicit_allow_anonymous_serve_on_the_network(tmp_path: Path) -> None:
    entry = {"name": "team-a", "sha256": key_hash(KEY), "scopes": ["classify"]}
    assert AuthConfig(api_keys=[entry]).exposure_problem("0.0.0.0") is None
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"api_keys": [entry]}))
    assert AuthConfig(api_keys_file=keys_file).exposure_problem("0.0.0.0") is None
    assert AuthConfig(allow_anonymous=True).exposure_problem("0.0.0.0") is None
