"""API keys: who is calling, and whether their key has the scope a route needs.

Keys are configured as SHA-256 hashes only, so a leaked config or log reveals no key. A key's
`name` is who holds it: files and batches belong to that name, and rate limits count per name,
so two keys with one name (an old and a new one, while rotating) share both. With no keys
configured every route is open and every caller is one anonymous principal that sees everything:
the app serves so only on a loopback host, or where `auth.allow_anonymous` says so.
`capserve keys new` makes a key and its entry (capserve/keys.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request

from capabilities.priority import DEFAULT_PRIORITY, PRIORITIES, Priority, above
from capserve.keys import SCOPES, KeyEntry, Scope, key_hash
from deployments.http.errors import AuthenticationError, PermissionDeniedError
from deployments.http.rate_limit import RateLimits
from deployments.http.routes import Access


class ApiKey(KeyEntry):
    rate_limits: RateLimits | None = Field(
        default=None, description="This key's limits in place of `rate_limits.default`."
    )
    priority: Priority = Field(
        default=DEFAULT_PRIORITY,
        description="The priority of this key's online requests that name none.",
    )
    max_priority: Priority = Field(
        default=PRIORITIES[0],
        description="The most urgent priority this key's requests may ask for; a request asking "
        "for more is refused (403).",
    )

    @model_validator(mode="after")
    def _default_within_limit(self) -> ApiKey:
        if above(self.priority, self.max_priority):
            raise ValueError(
                f"priority {self.priority!r} is above max_priority {self.max_priority!r}; "
                "lower priority or raise max_priority"
            )
        return self


class ApiKeyList(BaseModel):
    """The `api_keys_file`: YAML or JSON `{api_keys: [...]}`."""

    model_config = ConfigDict(extra="forbid")

    api_keys: list[ApiKey]


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    api_keys: list[ApiKey] = Field(
        default_factory=list, description="Keys admitted; none (and no file) turns keys off."
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="A YAML file `{api_keys: [...]}` of more keys, read at start-up, so keys "
        "can live outside the serve config (e.g. a Kubernetes secret).",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Serve without keys on a host reachable from the network, every caller one "
        "anonymous principal that sees every tenant's files and batches. Without keys the app "
        "otherwise starts only on a loopback host.",
    )

    @model_validator(mode="after")
    def _one_entry_per_key(self) -> AuthConfig:
        hashes = [key.sha256 for key in self.all_keys()]
        if len(set(hashes)) != len(hashes):
            raise ValueError("api_keys: a sha256 appears twice; each key needs one entry")
        return self

    def all_keys(self) -> list[ApiKey]:
        return [*self.api_keys, *self._file_keys()]

    def _file_keys(self) -> list[ApiKey]:
        if self.api_keys_file is None:
            return []
        path = self.api_keys_file.expanduser()
        try:
            listed = ApiKeyList.model_validate(yaml.safe_load(path.read_text()))
        except OSError as error:
            raise ValueError(f"api_keys_file: cannot read {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"api_keys_file: {path} is not YAML: {error}") from None
        except ValidationError as error:
            raise ValueError(f"api_keys_file: {path}: {error}") from None
        return listed.api_keys

    def exposure_problem(self, http_host: str) -> str | None:
        """Why serving on `http_host` with these settings would open every tenant's data to the
        network; None when it would not (keys, a loopback host, or anonymous access chosen)."""
        if self.allow_anonymous or is_loopback(http_host) or self.all_keys():
            return None
        return (
            f"auth: no API keys, and Serve's http_options.host {http_host!r} is reachable from "
            "the network: every caller would be one anonymous principal that sees every "
            "tenant's files and batches. Add keys (auth.api_keys or auth.api_keys_file; "
            "`capserve keys new` makes one), bind 127.0.0.1, or set "
            "auth.allow_anonymous: true to serve without keys on purpose"
        )


def is_loopback(host: str) -> bool:
    """True for a host only this machine reaches: `localhost` or a loopback address."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Principal:
    """Who a request comes from."""

    name: str
    scopes: frozenset[Scope]
    rate_limits: RateLimits | None
    tenant: str | None
    """Whose files and batches it sees; None when keys are off: all of them."""
    priority: Priority = DEFAULT_PRIORITY
    max_priority: Priority = PRIORITIES[0]

    def priority_for(self, requested: Priority | None) -> Priority:
        """The priority a request runs at: the one it asks for, or its key's; 403 when it asks
        for more than its key may."""
        if requested is None:
            return self.priority
        if above(requested, self.max_priority):
            raise PermissionDeniedError(
                f"priority: the key of {self.name!r} may ask for priority up to "
                f"{self.max_priority!r}, not {requested!r}; send {self.max_priority!r} or "
                "lower, or leave priority out to run at the key's default "
                f"{self.priority!r}",
                "priority",
            )
        return requested


ANONYMOUS = Principal(name="anonymous", scopes=frozenset(SCOPES), rate_limits=None, tenant=None)


def principal_of(request: Request) -> Principal:
    """The caller the key check found for this request."""
    return request.state.principal


class Authenticator:
    def __init__(self, keys: Sequence[ApiKey]) -> None:
        # Looked up by hash: the lookup's timing depends on the hash, which tells nothing of keys.
        self._by_hash = {key.sha256: key for key in keys}

    @property
    def enabled(self) -> bool:
        return bool(self._by_hash)

    def authenticate(self, authorization: str | None, access: Access) -> Principal:
        """The caller of a route with `access`, from its Authorization header; raises 401 or
        403 errors that say what to send instead."""
        if access == "public" or not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError(
                "this endpoint needs an API key: send the header 'Authorization: Bearer <key>' "
                "(the openai SDK sends its api_key so)"
            )
        key = self._by_hash.get(key_hash(token.strip()))
        if key is None:
            raise AuthenticationError(
                "the API key is not valid; check it, or ask for one with the scope you need"
            )
        if access != "any_key" and access not in key.scopes:
            raise PermissionDeniedError(
                f"the key of {key.name!r} lacks the scope {access!r} this endpoint needs; it has "
                f"{sorted(key.scopes)}"
            )
        return _principal(key)

    def principal_of_tenant(self, tenant: str | None) -> Principal:
        """Who owns a tenant's files and batches (made with keys off: the anonymous caller);
        a name that no key has any more keeps its name, with no scope and default limits."""
        if tenant is None:
            return ANONYMOUS
        key = next((key for key in self._by_hash.values() if key.name == tenant), None)
        if key is None:
            return Principal(name=tenant, scopes=frozenset(), rate_limits=None, tenant=tenant)
        return _principal(key)


def _principal(key: ApiKey) -> Principal:
    return Principal(
        name=key.name,
        scopes=frozenset(key.scopes),
        rate_limits=key.rate_limits,
        tenant=key.name,
        priority=key.priority,
        max_priority=key.max_priority,
    )
