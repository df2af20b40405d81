"""API keys: who is calling, and whether their key has the scope a route needs.

Keys are configured as SHA-256 hashes only, so a leaked config or log reveals no key. A key's
`name` is who holds it: files and batches belong to that name, and rate limits count per name,
so two keys with one name (an old and a new one, while rotating) share both. With no keys
configured every route is open and every caller is one anonymous principal that sees everything.

    python -m deployments.http.auth new --name team-a --scopes classify batch

prints a fresh key and the config entry that admits it.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request

from capabilities.priority import DEFAULT_PRIORITY, PRIORITIES, Priority, above
from deployments.http.errors import AuthenticationError, PermissionDeniedError
from deployments.http.rate_limit import RateLimits
from deployments.http.routes import SCOPES, Access, Scope

KEY_PREFIX = "sk-capserve-"


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.@-]{1,64}$",
        description="Who holds the key: owns the files and batches made with it, and its rate "
        "limits count per name.",
    )
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the key; the key is never stored."
    )
    scopes: list[Scope] = Field(
        min_length=1,
        description="`classify`: classify, chat and embeddings; `batch`: files and batches; "
        "`admin`: stats.",
    )
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
    return request.state.principal  # type: ignore[no-any-return]


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


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
            priority=key.priority,
            max_priority=key.max_priority,
        )


def new_key_entry(name: str, scopes: Sequence[Scope]) -> tuple[str, ApiKey]:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, ApiKey(name=name, sha256=key_hash(key), scopes=list(scopes))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.http.auth", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a key and print it with its config entry")
    new.add_argument("--name", required=True)
    new.add_argument("--scopes", nargs="+", choices=SCOPES, default=["classify"])
    hashed = commands.add_parser("hash", help="print the sha256 entry of an existing key")
    hashed.add_argument("key")
    arguments = parser.parse_args(argv)
    if arguments.command == "hash":
        print(key_hash(arguments.key))
        return
    try:
        key, entry = new_key_entry(arguments.name, arguments.scopes)
    except ValidationError as error:
        parser.error(str(error))
    print(f"key (give it to {arguments.name}; it is not stored anywhere): {key}")
    print("config entry, under args.auth.api_keys:")
    print(yaml.safe_dump([entry.model_dump(exclude_none=True)], sort_keys=False), end="")


if __name__ == "__main__":
    main()
