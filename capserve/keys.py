"""API keys as a client and an operator see them: the key, its SHA-256, its config entry.

The service stores only the hash, so `capserve keys new` prints the key once and the entry that
admits it, and `capserve keys hash` turns a key someone holds into the entry's `sha256`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

KEY_PREFIX = "sk-capserve-"

Scope = Literal["classify", "batch", "admin"]
SCOPES: tuple[Scope, ...] = ("classify", "batch", "admin")


class KeyEntry(BaseModel):
    """A key's entry under `args.auth.api_keys`: who holds it, its hash and its scopes."""

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


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str, scopes: Sequence[str]) -> tuple[str, KeyEntry]:
    """A fresh key and its entry; raises pydantic's ValidationError for a bad name or scope."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, KeyEntry.model_validate({"name": name, "sha256": key_hash(key), "scopes": scopes})
