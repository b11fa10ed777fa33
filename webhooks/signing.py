"""Standard Webhooks signatures: one ``v1,<base64 HMAC-SHA256>`` per configured secret value.

Signed with the ``standardwebhooks`` reference library, so a receiver using any implementation of
the specification verifies what we send. A secret is configured by name in the workers'
environment, ``TIERBOX_WEBHOOK_SECRET_<NAME>``, as one or more space-separated ``whsec_...``
values: during a rotation both the old and the new value sign, and a receiver holding either verifies.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping

from standardwebhooks.webhooks import Webhook as Signer

from outbox.errors import Reject
from outbox.webhooks import secret_env


def secret_values(name: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the secret ``name``; :class:`Reject` (dead letter, no retry) if none is configured.

    The error names the environment variable, never a value.
    """
    env = os.environ if environ is None else environ
    values = env.get(secret_env(name), "").split()
    if not values:
        raise Reject(f"webhook secret {name!r} is not configured on this worker ({secret_env(name)})",
                     fingerprint="webhook-secret-missing")
    return values


def signature(secrets: list[str], msg_id: str, at: dt.datetime, body: str, env_name: str) -> str:
    """The ``webhook-signature`` header: the signatures by every secret, space-separated."""
    out = []
    for i, secret in enumerate(secrets, 1):
        try:
            out.append(Signer(secret).sign(msg_id, at, body))
        except Exception as exc:  # noqa: BLE001 - the value is never part of the message
            raise Reject(f"value {i} of {env_name} is not a base64 whsec_ secret ({type(exc).__name__})",
                         fingerprint="webhook-secret-invalid") from None
    return " ".join(out)
