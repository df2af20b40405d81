"""API keys: who is calling, and whether their key has the scope a route needs.

Keys are configured as SHA-256 hashes only, so a leaked config or log reveals no key. A key's
`name` is who holds it: files and batches belong to that name, and rate limits count per name,
so two keys with one name (an old and a new one, while rotating) share both. With no keys
configured every route is open and every caller is one anonymous principal that sees everything.
`capserve keys new` makes a key and its entry (capserve/keys.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request

from capserve.keys import SCOPES, KeyEntry, Scope, key_hash
from deployments.http.errors import AuthenticationError, PermissionDeniedError
from deployments.http.rate_limit import RateLimits
from deployments.http.routes import Access


class ApiKey(KeyEntry):
    rate_limits: RateLimits | None = Field(
        default=None, description="This key's limits in place of `rate_limits.default`."
    )


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


@dataclass(frozen=True)
class Principal:
    """Who a request comes from."""

    name: str
    scopes: frozenset[Scope]
    rate_limits: RateLimits | None
    tenant: str | None
    """Whose files and batches it sees; None when keys are off: all of them."""


ANONYMOUS = Principal(name="anonymous", scopes=frozenset(SCOPES), rate_limits=None, tenant=None)


def principal_of(request: Request) -> Principal:
    """The caller the key check found for this request."""
    return request.state.principal  # type: ignore[no-any-return]


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
        return Principal(
            name=key.name,
            scopes=frozenset(key.scopes),
            rate_limits=key.rate_limits,
            tenant=key.name,
        )
