"""The admin API's settings: one frozen object, read from the environment at the entry point.

Tokens are configured as SHA-256 hashes, never in clear (see :mod:`api.auth`
for the format). Every field says its default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from outbox.errors import ConfigError
from tierbox.api.auth import ApiToken, load_tokens
from tierbox.ops.broker import DEFAULT_BROKER_TIMEOUT_S

#: Where ``tierbox api`` listens unless told otherwise.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: Largest request body accepted (the bulk redrive body is the largest legitimate one: well under 4 KiB).
DEFAULT_MAX_BODY_BYTES = 64 * 1024
#: Seconds /readyz, /admin/tiers and /metrics wait for RabbitMQ before reporting it unreachable.


class ApiConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the admin API runs. Validated at construction."""

    #: Configured tokens (hashes and scopes). Defaults to none: the API refuses to start without one.
    tokens: tuple[ApiToken, ...] = ()
    #: Serve without tokens, every caller acting as ``insecure-dev`` (bound to 127.0.0.1). Defaults to False.
    insecure_dev: bool = False
    #: Interface to bind. Defaults to 127.0.0.1.
    host: str = DEFAULT_HOST
    #: TCP port. Defaults to 8080.
    port: int = DEFAULT_PORT
    #: Largest request body in bytes; larger ones get 413. Defaults to 64 KiB.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Seconds to wait for RabbitMQ on health and queue-depth reads. Defaults to 3 s.
    broker_timeout_s: float = DEFAULT_BROKER_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.tokens and not self.insecure_dev:
            raise ConfigError("TIERBOX_API_TOKENS", "no API token configured: set TIERBOX_API_TOKENS or "
                                                    "TIERBOX_API_TOKENS_FILE (or pass --insecure-dev on a laptop)")
        if self.insecure_dev and self.host != DEFAULT_HOST:
            raise ConfigError("--host", "--insecure-dev binds to 127.0.0.1 only")
        if not 0 < self.port < 65536:
            raise ConfigError("--port", f"must be 1..65535, got {self.port}")
        if self.max_body_bytes <= 0 or self.broker_timeout_s <= 0:
            raise ConfigError("api", "max_body_bytes and broker_timeout_s must be > 0")

    @property
    def auth_disabled(self) -> bool:
        """True when every caller is let in (insecure-dev mode and no token configured)."""
        return self.insecure_dev and not self.tokens

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, insecure_dev: bool = False,
                 host: str | None = None, port: int | None = None) -> ApiConfig:
        """Read ``TIERBOX_API_TOKENS`` / ``TIERBOX_API_TOKENS_FILE``; flags override the rest."""
        env = os.environ if environ is None else environ
        tokens = load_tokens(env.get("TIERBOX_API_TOKENS"), env.get("TIERBOX_API_TOKENS_FILE"))
        return cls(tokens=tokens, insecure_dev=insecure_dev, host=host or DEFAULT_HOST,
                   port=port if port is not None else DEFAULT_PORT)
