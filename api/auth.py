"""Bearer tokens with two scopes, stored only as SHA-256 hashes and compared in constant time.

Format, in ``TIERBOX_API_TOKENS`` (comma- or newline-separated) or in the file
named by ``TIERBOX_API_TOKENS_FILE`` (one per line, ``#`` starts a comment)::

    NAME:SCOPE:SHA256HEX
    ops-alice:operate:5e88489...   # may redrive and discard, and read
    grafana:read:9f86d08...        # may only read (GET, /metrics)

``SHA256HEX`` is the lowercase hex SHA-256 of the secret the client sends as
``Authorization: Bearer <secret>``; ``tierbox api-token NAME`` makes a secret
and prints its line. ``NAME`` is what the audit table records as the actor.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from pathlib import Path
from typing import Literal

import msgspec

from outbox.errors import ConfigError

Scope = Literal["read", "operate"]
SCOPES: tuple[Scope, ...] = ("read", "operate")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class ApiToken(msgspec.Struct, frozen=True):
    """One configured token: who it is, what it may do, and the hash of its secret."""

    name: str
    scope: Scope
    sha256: str


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: recorded in ``admin_audit`` (``kind`` is ``token`` or ``insecure_dev``)."""

    name: str
    scope: Scope
    kind: str = "token"

    def may(self, scope: Scope) -> bool:
        """``operate`` implies ``read``."""
        return scope == "read" or self.scope == "operate"


INSECURE_DEV = Principal("insecure-dev", "operate", "insecure_dev")


def hash_token(secret: str) -> str:
    """The hex SHA-256 of a token secret, as configured."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(name: str, scope: Scope) -> tuple[str, str]:
    """A fresh random secret and the config line (``NAME:SCOPE:SHA256HEX``) that accepts it."""
    secret = secrets.token_urlsafe(32)
    return secret, f"{name}:{scope}:{hash_token(secret)}"


def parse_tokens(text: str, source: str = "TIERBOX_API_TOKENS") -> tuple[ApiToken, ...]:
    """Parse ``NAME:SCOPE:SHA256HEX`` entries; raises :class:`ConfigError` naming the bad entry."""
    tokens: list[ApiToken] = []
    for raw in re.split(r"[,\n]", text):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise ConfigError(source, f"entry {len(tokens) + 1}: expected NAME:SCOPE:SHA256HEX")
        name, scope, digest = (p.strip() for p in parts)
        if not _NAME.match(name):
            raise ConfigError(source, f"token name {name!r}: letters, digits, _.@- only, at most 64")
        if scope not in SCOPES:
            raise ConfigError(source, f"token {name!r}: scope must be read or operate, got {scope!r}")
        if not _HEX64.match(digest.lower()):
            raise ConfigError(source, f"token {name!r}: the hash must be 64 hex digits (sha256), not the secret")
        tokens.append(ApiToken(name, scope, digest.lower()))  # type: ignore[arg-type,unused-ignore]
    names = [t.name for t in tokens]
    if len(names) != len(set(names)):
        raise ConfigError(source, "token names must be unique (the audit log identifies callers by name)")
    return tuple(tokens)


def load_tokens(env_value: str | None, file_path: str | None) -> tuple[ApiToken, ...]:
    """Tokens from the env value and/or the file (both may be given)."""
    tokens = parse_tokens(env_value or "")
    if file_path:
        try:
            text = Path(file_path).read_text()
        except OSError as exc:
            raise ConfigError("TIERBOX_API_TOKENS_FILE", str(exc)) from exc
        tokens += parse_tokens(text, "TIERBOX_API_TOKENS_FILE")
    return tokens


class TokenStore:
    """Resolves a presented secret to its :class:`Principal`, in time independent of which token matched."""

    def __init__(self, tokens: tuple[ApiToken, ...]) -> None:
        self._tokens = tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def resolve(self, secret: str) -> Principal | None:
        """The principal whose hash matches ``secret``, or None."""
        presented = hash_token(secret)
        found: ApiToken | None = None
        for token in self._tokens:  # no early exit: every entry is compared
            if hmac.compare_digest(presented, token.sha256):
                found = token
        return Principal(found.name, found.scope) if found else None


def bearer(header: str | None) -> str | None:
    """The secret of an ``Authorization: Bearer <secret>`` header, or None."""
    if not header:
        return None
    kind, _, secret = header.partition(" ")
    return secret.strip() or None if kind.lower() == "bearer" else None
