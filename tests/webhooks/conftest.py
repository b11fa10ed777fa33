"""Fixtures of the webhook tests: a real HTTP receiver on loopback, secrets, and workers allowed to reach it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook as Verifier
from werkzeug.wrappers import Request, Response

from outbox import webhooks
from outbox.config import Settings

#: Two values of the secret "crm" (a rotation in progress): each signs every delivery.
OLD_SECRET = "whsec_" + base64.b64encode(b"old-secret-of-the-webhook-tests-0001").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"new-secret-of-the-webhook-tests-0002").decode()
WORKER_ENV = {
    "TIERBOX_WEBHOOK_ALLOW": "127.0.0.1",
    "TIERBOX_WEBHOOK_SECRET_CRM": f"{OLD_SECRET} {NEW_SECRET}",
}


def signed_by_hand(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks ``v1`` signature computed from the specification alone, without the
    ``standardwebhooks`` library Tierbox signs with: the key is the base64 after ``whsec_``, the
    signed content ``{id}.{timestamp}.{body}``, the MAC HMAC-SHA256, sent as ``v1,<base64>``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


@dataclass
class Receiver:
    """A webhook receiver as a careful application writes one: it verifies the signature with the
    ``standardwebhooks`` library and processes each ``webhook-id`` once (idempotency)."""

    server: HTTPServer
    #: Answer of each request (a status, or a function of the request count).
    status: Callable[[int], int] = lambda n: 204
    #: Retry-After header sent with a 429/503.
    retry_after: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    processed: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hooks") -> str:
        return self.server.url_for(path)

    def handle(self, request: Request) -> Response:
        raw = request.get_data()
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self.lock:
            self.requests.append({"headers": headers, "body": raw, "at": time.monotonic(), "wall": time.time()})
            status = self.status(len(self.requests))
            if 200 <= status < 300:
                Verifier(NEW_SECRET).verify(raw, headers)  # raises on a bad signature: the test sees a 500
                self.processed.setdefault(headers["webhook-id"], json.loads(raw))
        extra = {"Retry-After": self.retry_after} if self.retry_after and status in (429, 503) else {}
        return Response("nope" if status >= 300 else "", status=status, headers=extra)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP server on 127.0.0.1 (pytest-httpserver) answering every POST through :class:`Receiver`."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    rec = Receiver(server)
    server.expect_request("/hooks", method="POST").respond_with_handler(rec.handle)
    yield rec
    server.clear()
    if server.is_running():
        server.stop()


@pytest.fixture
def allow_loopback() -> Iterator[None]:
    """Admit 127.0.0.1 in this process (the enqueuing side), as TIERBOX_WEBHOOK_ALLOW does in workers."""
    before = webhooks.policy()
    webhooks.configure(allow="127.0.0.1")
    yield
    webhooks.configure(allow=[*map(str, before.allow_networks), *before.allow_hosts], tier=before.tier)


@pytest.fixture
def settings(db_url: str, prefix: str, service_urls: dict[str, str]) -> Settings:
    """The suite's settings, with a 10 s lease: on a loaded box a 2 s lease expires under a delivery
    waiting for its receiver, and the reaper's second run would blur what these tests count."""
    return Settings(
        database_url=db_url, amqp_url=service_urls["rabbitmq"], redis_url=service_urls["redis"],
        queue_prefix=prefix, relay_poll_interval_s=0.2, relay_retry_delay_s=0.2, lease_s=10.0,
        reaper_interval_s=1.0, shutdown_grace_s=5.0, app="sample_tasks",
    )

