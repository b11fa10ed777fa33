"""Settings: one frozen object per process, read from the environment at entry points.

Every field says its default. Env variables carry the ``TIERBOX_`` prefix and
the field's name in capitals (``TIERBOX_RELAY_BATCH_SIZE``). Library code
never reads the environment itself; entry points call :meth:`Settings.from_env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

from outbox.errors import ConfigError
from outbox.tiers import Topology, load_topology

ENV_PREFIX = "TIERBOX_"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a Tierbox process can be told. Validated at construction."""

    #: Postgres holding the ``outbox`` schema. Defaults to the local ``test`` database.
    database_url: str = DEFAULT_DATABASE_URL
    #: RabbitMQ: one URL, or the nodes of a cluster as comma-separated URLs
    #: (``amqp://u:p@h1:5672/,amqp://u:p@h2:5672/``; write a comma in a password as ``%2C``). Every
    #: process connects to the first node that answers, trying them in rotating order, and fails
    #: over to another when its node is lost (docs/cluster.md). Defaults to guest on localhost.
    amqp_url: str = DEFAULT_AMQP_URL
    #: Redis for cluster coordination. Defaults to localhost db 0.
    redis_url: str = DEFAULT_REDIS_URL
    #: Direct exchange the relay publishes to. Defaults to ``tierbox``.
    exchange: str = "tierbox"
    #: Prepended to every queue and exchange name (isolates tests and tenants). Defaults to "".
    queue_prefix: str = ""
    #: JSON file overriding the tier topology. Defaults to none (built-in topology).
    topology_file: str | None = None
    #: Largest encoded args+kwargs accepted by enqueue. Defaults to 256 KiB.
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    #: Rows the relay claims per batch. Defaults to 500.
    relay_batch_size: int = 500
    #: How often an idle relay lane looks for due rows: the wake-up of non-urgent tiers (urgent
    #: ones NOTIFY) and the safety net of urgent ones. Defaults to 0.25 s.
    relay_poll_interval_s: float = 0.25
    #: Lanes of a relay process that claim only urgent tiers' rows (each with its own Postgres and
    #: AMQP connection; a NOTIFY wakes one idle lane), so a row committed while one lane waits for
    #: its batch's confirms is claimed at once by another. Defaults to 1: a second lane has not shown
    #: a gain in a same-moment A/B on the benchmark box (bench/README.md, "Urgent lanes").
    relay_urgent_lanes: int = 1
    #: How long the relay waits for publisher confirms of one batch. Defaults to 10 s.
    relay_confirm_timeout_s: float = 10.0
    #: Delay before a row whose publish failed is tried again. Defaults to 1.0 s.
    relay_retry_delay_s: float = 1.0
    #: How often the relay compares, per tier queue, the jobs Postgres says are published and not
    #: started with what RabbitMQ and the workers hold, and republishes the missing ones
    #: (docs/reliability.md, "Reconciliation"); 0 disables it. Defaults to 10 s.
    reconcile_interval_s: float = 10.0
    #: How long a published, unstarted job must have been published before reconciliation may
    #: republish it. Defaults to none: per tier, max(30 s, 10 x the tier's SLO) (30 s without an SLO).
    reconcile_grace_s: float | None = None
    #: Most jobs one reconciliation round republishes per tier. Defaults to 1000.
    reconcile_batch: int = 1000
    #: Seconds a worker's lease on a running job lasts without a heartbeat. Defaults to 30 s.
    lease_s: float = 30.0
    #: Seconds between the reaper's scans for expired leases. Defaults to 5 s.
    reaper_interval_s: float = 5.0
    #: Seconds in-flight jobs get to finish after SIGTERM. Defaults to 30 s.
    shutdown_grace_s: float = 30.0
    #: Days succeeded (and expired) jobs are kept before pruning. Defaults to 7.
    retention_succeeded_days: float = 7.0
    #: Days dead and discarded jobs are kept before pruning. Defaults to 30.
    retention_dead_days: float = 30.0
    #: Days ahead of today whose job-history partitions (docs/schema.md, "Partitions") exist at all
    #: times: created by ``tierbox migrate``, ``tierbox partitions`` and the workers, hourly. Defaults to 7.
    partition_days_ahead: int = 7
    #: Comma-separated modules that register tasks (``--app``). Defaults to none.
    app: str = ""
    #: Log lines as ``text`` (``key=value``) or ``json`` (one object per line, with the trace id).
    #: Defaults to ``text``.
    log_format: str = "text"
    #: Addresses completion webhooks may reach although they are loopback, private, link-local or
    #: metadata addresses: CIDRs, addresses or host names, comma- or space-separated (docs/webhooks.md).
    #: Defaults to none.
    webhook_allow: str = ""
    #: Tier of the jobs that deliver completion webhooks (checked against the topology at enqueue).
    #: Defaults to ``normal``.
    webhook_tier: str = "normal"

    def __post_init__(self) -> None:
        for field, scheme in (
            ("database_url", ("postgresql", "postgres", "postgresql+psycopg")),
            ("redis_url", ("redis", "rediss", "unix")),
        ):
            _check_url(field, getattr(self, field), scheme)
        _check_amqp_urls(self.amqp_url)
        positive = ("max_payload_bytes", "relay_batch_size", "relay_poll_interval_s", "relay_confirm_timeout_s",
                    "relay_urgent_lanes", "lease_s", "reaper_interval_s", "reconcile_batch", "partition_days_ahead")
        for field in positive:
            if getattr(self, field) <= 0:
                raise ConfigError(_env(field), f"must be > 0, got {getattr(self, field)!r}")
        if self.reconcile_grace_s is not None and self.reconcile_grace_s < 0:
            raise ConfigError(_env("reconcile_grace_s"), f"must be >= 0, got {self.reconcile_grace_s!r}")
        for field in ("shutdown_grace_s", "relay_retry_delay_s", "reconcile_interval_s"):
            if getattr(self, field) < 0:
                raise ConfigError(_env(field), f"must be >= 0, got {getattr(self, field)!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(_env("log_format"), f"must be text or json, got {self.log_format!r}")
        if self.reaper_interval_s > self.lease_s:
            raise ConfigError(_env("reaper_interval_s"), "must not exceed lease_s, or stuck jobs wait twice as long")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``TIERBOX_*`` variables, then explicit overrides (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            raw = env.get(_env(name))
            if raw is not None and raw != "":
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            if isinstance(exc.__cause__, ConfigError):  # raised by __post_init__: already names the setting
                raise exc.__cause__ from None
            raise ConfigError(_field_env(str(exc)), str(exc)) from exc

    @property
    def topology(self) -> Topology:
        """The tier topology in force (cached per settings object)."""
        return _topology(self.topology_file)

    @property
    def sqlalchemy_url(self) -> str:
        """``database_url`` with the psycopg 3 driver named, for SQLAlchemy engines."""
        _, _, rest = self.database_url.partition("://")
        return f"postgresql+psycopg://{rest}"

    @property
    def psycopg_url(self) -> str:
        """``database_url`` as libpq accepts it."""
        _, _, rest = self.database_url.partition("://")
        return f"postgresql://{rest}"

    def reconcile_grace(self, tier: str) -> float:
        """Seconds a published, unstarted job of ``tier`` waits before reconciliation may republish it."""
        if self.reconcile_grace_s is not None:
            return self.reconcile_grace_s
        slo_s = self.topology.spec(tier).slo_s
        return max(30.0, 10 * slo_s) if slo_s is not None else 30.0

    def queue_name(self, tier: str) -> str:
        """The RabbitMQ queue that holds ``tier``'s messages."""
        return self.queue_prefix + self.topology.spec(tier).queue_name(tier)

    def dlq_name(self, tier: str) -> str:
        """The RabbitMQ dead-letter queue of ``tier``."""
        return self.queue_name(tier) + ".dlq"

    @property
    def exchange_name(self) -> str:
        """The main exchange's name, with the prefix."""
        return self.queue_prefix + self.exchange

    @property
    def dlx_name(self) -> str:
        """The dead-letter exchange's name, with the prefix."""
        return self.exchange_name + ".dlx"

    def app_modules(self) -> list[str]:
        """The modules named by ``app``."""
        return [m.strip() for m in self.app.split(",") if m.strip()]


_TOPOLOGY_CACHE: dict[str | None, Topology] = {}


def _topology(path: str | None) -> Topology:
    if path not in _TOPOLOGY_CACHE:
        _TOPOLOGY_CACHE[path] = load_topology(path)
    return _TOPOLOGY_CACHE[path]


def _env(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _field_env(message: str) -> str:
    # msgspec says "... - at `$.relay_batch_size`"; turn the path into the env name.
    if "$." in message:
        return _env(message.rsplit("$.", 1)[1].strip("`"))
    return "settings"


def _check_url(field: str, url: str, schemes: tuple[str, ...]) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(_env(field), f"{url!r} is not a URL: {exc}") from exc
    if parts.scheme not in schemes:
        expected = ", ".join(s + "://" for s in schemes)
        raise ConfigError(_env(field), f"{_redact(url)!r} must start with one of {expected}")
    if parts.scheme != "unix" and not parts.hostname and field != "database_url":
        raise ConfigError(_env(field), f"{_redact(url)!r} names no host")


def _check_amqp_urls(value: str) -> None:
    # Several comma-separated nodes of one cluster (outbox/_brokers.py connects to one of them).
    urls = [part.strip() for part in value.split(",")]
    if not any(urls):
        raise ConfigError(_env("amqp_url"), "names no AMQP URL")
    for i, url in enumerate(urls):
        if not url:
            raise ConfigError(_env("amqp_url"), f"item {i + 1} of {_redact(value)!r} is empty (a stray comma?)")
        _check_url("amqp_url", url, ("amqp", "amqps"))


def _redact(url: str) -> str:
    """The URL with any password replaced, safe for logs and error messages (each URL of a
    comma-separated list)."""
    if url.count("://") > 1:
        return ",".join(_redact(part) for part in url.split(","))
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


redact_url = _redact
