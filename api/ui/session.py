"""The dashboard's browser session: a signed cookie naming the token (never its secret) and a CSRF token.

Logging in posts an existing API token once; the server checks it against the
configured hashes and answers with a cookie holding ``name``, ``scope``, a
random CSRF token and an expiry, signed with HMAC-SHA256. The cookie is
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page
sends it) and ``Secure`` when the request came over HTTPS. Each request checks
that the token is still configured with the same scope, so removing a token
from ``TIERBOX_API_TOKENS`` and restarting ends its sessions.

The signing key is ``TIERBOX_UI_SESSION_KEY`` (at least 32 characters) when set,
so sessions survive a restart and are valid on every replica; otherwise a random
key per process (sessions end with the process).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time

import msgspec

from outbox.errors import ConfigError
from tierbox.api.auth import ApiToken, Principal

#: The cookie's name.
COOKIE = "tierbox_session"
#: How long a session lasts, seconds (8 h: a working day; log in again after).
MAX_AGE_S = 8 * 3600
#: Form field (and ``X-CSRF-Token`` header, for htmx) carrying the session's CSRF token.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: Environment variable naming the signing key.
KEY_ENV = "TIERBOX_UI_SESSION_KEY"


class Session(msgspec.Struct, frozen=True):
    """What the cookie holds: who, with what scope, the CSRF token, and until when (epoch seconds)."""

    name: str
    scope: str
    kind: str
    csrf: str
    expires: float


def signing_key(environ: dict[str, str] | None = None) -> bytes:
    """The key from ``TIERBOX_UI_SESSION_KEY``, or a random one for this process."""
    value = (environ if environ is not None else dict(os.environ)).get(KEY_ENV, "")
    if not value:
        return secrets.token_bytes(32)
    if len(value) < 32:
        raise ConfigError(KEY_ENV, "at least 32 characters (e.g. the output of `openssl rand -hex 32`)")
    return value.encode()


class SessionCodec:
    """Signs and checks session cookies with one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def new(self, principal: Principal) -> Session:
        """A fresh session (new CSRF token) for ``principal``."""
        return Session(principal.name, principal.scope, principal.kind, secrets.token_urlsafe(32),
                       time.time() + MAX_AGE_S)

    def encode(self, session: Session) -> str:
        """The cookie value: base64url(JSON) ``.`` base64url(HMAC)."""
        body = base64.urlsafe_b64encode(msgspec.json.encode(session)).rstrip(b"=")
        return f"{body.decode()}.{self._sign(body)}"

    def decode(self, value: str | None) -> Session | None:
        """The session of a cookie value; None if absent, forged, malformed or expired."""
        if not value or "." not in value or len(value) > 4096:
            return None
        body, _, sig = value.rpartition(".")
        if not hmac.compare_digest(sig, self._sign(body.encode())):
            return None
        try:
            session = msgspec.json.decode(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)), type=Session)
        except (msgspec.DecodeError, ValueError):
            return None
        return session if session.expires > time.time() else None

    def _sign(self, body: bytes) -> str:
        digest = hmac.new(self._key, body, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def principal_of(session: Session, tokens: tuple[ApiToken, ...], insecure_dev: bool) -> Principal | None:
    """The principal a session stands for, if its token is still configured with the same scope."""
    if session.kind == "insecure_dev":
        return Principal(session.name, "operate", "insecure_dev") if insecure_dev else None
    for token in tokens:
        if token.name == session.name and token.scope == session.scope:
            return Principal(token.name, token.scope)
    return None
