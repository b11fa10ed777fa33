"""Completion webhooks: what an application declares, and the address checks both ends share.

``outbox.enqueue(..., webhook=outbox.Webhook(url=..., secret="crm"))`` (or ``on_complete=`` on the
task) asks Tierbox to POST a signed JSON document to ``url`` once the job reaches its final outcome
(succeeded, dead, expired, discarded). The declaration is written to ``outbox.webhooks`` in the
caller's transaction; the delivery job is written by a trigger in the transaction that records the
outcome (docs/webhooks.md). ``secret`` is the *name* of a secret: its values live only in the
workers' configuration (``TIERBOX_WEBHOOK_SECRET_<NAME>``), never in the database.

The address check (:func:`check_url`) refuses URLs whose host resolves to a loopback, private,
link-local, multicast, reserved or cloud-metadata address unless :func:`configure` admits it with
an allow-list; enqueue calls it, and the delivery calls it again before connecting (DNS changes).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import msgspec

from outbox.errors import ConfigError, EnqueueError
from outbox.tiers import Topology

#: The built-in task that delivers webhooks (registered by ``tierbox.webhooks.deliver`` in workers).
DELIVERY_TASK = "tierbox.webhook.deliver"
#: The tier delivery jobs run in unless :func:`configure` names another.
DEFAULT_TIER = "normal"
#: Retries of a delivery after its first attempt (then it is dead-lettered).
DELIVERY_MAX_RETRIES = 10
#: Exponential back-off of deliveries: base and cap, seconds (full jitter, as every task's).
DELIVERY_BACKOFF_S = 2.0
DELIVERY_BACKOFF_MAX_S = 600.0
#: Longest URL accepted.
MAX_URL_CHARS = 2048
#: A secret name: what follows ``TIERBOX_WEBHOOK_SECRET_`` in the workers' environment.
SECRET_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
#: The environment variable holding a secret's values (space-separated ``whsec_...``), by name.
SECRET_ENV_PREFIX = "TIERBOX_WEBHOOK_SECRET_"

#: Addresses no webhook may reach unless allowed: cloud metadata services (also link-local or ULA,
#: named so the refusal says what they are).
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
                                ipaddress.ip_address("100.100.100.200")})

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookError(EnqueueError):
    """A webhook declaration or its URL was refused. ``field`` is ``webhook.url`` or ``webhook.secret``."""


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    """Where to announce a job's final outcome: an ``http(s)`` URL and the *name* of its signing secret."""

    #: Receives a POST per final outcome: ``https://...`` (``http://`` is accepted for allow-listed hosts).
    url: str
    #: Name of the secret (``[A-Za-z0-9_]``, at most 64): workers read ``TIERBOX_WEBHOOK_SECRET_<NAME>``.
    secret: str


class Policy(msgspec.Struct, frozen=True):
    """Process-wide webhook settings; :func:`configure` replaces them."""

    #: Networks and host names admitted although they are private, loopback, etc.
    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    #: Tier of the delivery jobs.
    tier: str = DEFAULT_TIER


_policy = Policy()


def configure(*, allow: str | Iterable[str] | None = None, tier: str | None = None) -> None:
    """Set the allow-list (CIDRs, addresses or host names; a string is split on commas and spaces)
    and the delivery tier. Entry points call it from ``Settings.webhook_allow``/``webhook_tier``."""
    global _policy
    networks, hosts = _policy.allow_networks, _policy.allow_hosts
    if allow is not None:
        networks, hosts = parse_allow(allow)
    if tier is not None and (not isinstance(tier, str) or not tier):
        raise ConfigError("TIERBOX_WEBHOOK_TIER", f"must name a tier, got {tier!r}")
    _policy = Policy(networks, hosts, tier.lower() if tier is not None else _policy.tier)


def policy() -> Policy:
    """The settings in force."""
    return _policy


def parse_allow(allow: str | Iterable[str]) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    """Split an allow-list into networks (CIDRs or single addresses) and host names."""
    items = allow.replace(",", " ").split() if isinstance(allow, str) else [str(a).strip() for a in allow]
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for item in filter(None, items):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
            continue
        except ValueError:
            pass
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", item):
            raise ConfigError("TIERBOX_WEBHOOK_ALLOW", f"{item!r} is neither a CIDR, an address nor a host name")
        hosts.add(item.lower().rstrip("."))
    return tuple(networks), frozenset(hosts)


def check_declaration(webhook: object, field: str = "webhook") -> Webhook:
    """``webhook`` if it is a well-formed :class:`Webhook` (no DNS): raises :class:`WebhookError` naming the field."""
    if not isinstance(webhook, Webhook):
        raise WebhookError(field, f"expected outbox.Webhook(url=..., secret=...), got {type(webhook).__name__}")
    if (not isinstance(webhook.secret, str) or not SECRET_NAME.match(webhook.secret)
            or webhook.secret.lower().startswith("whsec_")):
        # The name only: a caller who passes a secret's value here must not see it echoed in logs.
        raise WebhookError(f"{field}.secret", "must be a secret's name ([A-Za-z0-9_], at most 64 characters), "
                                              "not its value: workers read TIERBOX_WEBHOOK_SECRET_<NAME>")
    _parts(webhook.url, f"{field}.url")
    return webhook


def check_url(url: str, field: str = "webhook.url") -> list[IPAddress]:
    """Resolve ``url``'s host and return its addresses, or raise :class:`WebhookError` naming ``field``
    if any of them is not a public unicast address and the allow-list does not admit it."""
    scheme, host, port = _parts(url, field)
    if host.lower().rstrip(".") in _policy.allow_hosts:
        return _resolve(host, port, field)
    addresses = _resolve(host, port, field)
    for address in addresses:
        why = refusal(address)
        if why and not any(address in net for net in _policy.allow_networks if net.version == address.version):
            raise WebhookError(field, f"{host} resolves to {address}, a {why} address: refused (SSRF guard; "
                                      f"admit it with TIERBOX_WEBHOOK_ALLOW if it is really meant)")
    if scheme == "http" and not all(
            any(a in net for net in _policy.allow_networks if net.version == a.version) for a in addresses):
        raise WebhookError(field, "plain http:// is accepted only for allow-listed hosts; use https://")
    return addresses


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be reached without the allow-list, or None for a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped)
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    for name in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    if not address.is_global:  # shared (100.64/10), documentation, benchmarking ranges
        return "non-global"
    return None


def secret_env(name: str) -> str:
    """The environment variable holding the values of the secret ``name``."""
    return SECRET_ENV_PREFIX + name.upper()


def _parts(url: object, field: str) -> tuple[str, str, int]:
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise WebhookError(field, f"must be an http(s) URL of at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookError(field, f"is not a URL: {exc}") from exc
    if parts.scheme not in ("https", "http"):
        raise WebhookError(field, f"must start with https:// (or http:// for allow-listed hosts), got {parts.scheme!r}")
    if not parts.hostname:
        raise WebhookError(field, "names no host")
    if parts.username or parts.password:
        raise WebhookError(field, "must not carry credentials (sign with a secret instead)")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _resolve(host: str, port: int, field: str) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookError(field, f"cannot resolve {host!r}: {exc}") from exc
    out: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in out:
            out.append(address)
    if not out:
        raise WebhookError(field, f"{host!r} resolves to no address")
    return out


class Declared(msgspec.Struct, frozen=True, kw_only=True):
    """A checked webhook of one job, with where its delivery job will run (a row of ``outbox.webhooks``)."""

    url: str
    secret: str
    tier: str
    weight: int
    priority: int
    max_retries: int = DELIVERY_MAX_RETRIES
    include_result: bool = False


def declare(webhook: object, task_default: Webhook | None, include_result: bool, topology: Topology) -> Declared | None:
    """The job's webhook (``webhook=`` of enqueue, else the task's ``on_complete``), checked and resolved,
    or None. Raises :class:`WebhookError` naming ``webhook``, ``webhook.url`` or ``webhook.secret``."""
    chosen = webhook if webhook is not None else task_default
    if chosen is None:
        return None
    checked = check_declaration(chosen)
    check_url(checked.url)
    tier = _policy.tier
    if tier not in topology.tiers:
        raise ConfigError("TIERBOX_WEBHOOK_TIER", f"{tier!r} is not a tier (known: {', '.join(topology.tiers)})")
    spec = topology.spec(tier)
    priority = min(spec.weight, spec.max_priority) if spec.max_priority is not None else spec.weight
    return Declared(url=checked.url, secret=checked.secret, tier=tier, weight=spec.weight, priority=priority,
                    include_result=include_result)


def declaration_params(declared: list[tuple[uuid.UUID, Declared]]) -> dict[str, list[Any]]:
    """Column arrays of ``DECLARE_WEBHOOKS`` for these (job id, webhook) pairs."""
    return {
        "job_ids": [job_id for job_id, _ in declared], "urls": [d.url for _, d in declared],
        "secrets": [d.secret for _, d in declared], "tiers": [d.tier for _, d in declared],
        "weights": [d.weight for _, d in declared], "priorities": [d.priority for _, d in declared],
        "max_retries": [d.max_retries for _, d in declared],
        "include_result": [d.include_result for _, d in declared],
    }


#: Largest encoded handler result sent in a webhook; a larger one is replaced by its size.
MAX_RESULT_BYTES = 64 * 1024


def result_params(job_id: uuid.UUID, value: Any) -> dict[str, Any]:
    """Parameters of ``RECORD_RESULT`` for a handler's return value: its JSON, or a marker saying why
    it cannot be sent (not JSON-encodable, too large)."""
    try:
        encoded = msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError):
        encoded = msgspec.json.encode({"unencodable": type(value).__name__})
    if len(encoded) > MAX_RESULT_BYTES:
        encoded = msgspec.json.encode({"too_large_bytes": len(encoded)})
    return {"job_id": job_id, "result": encoded.decode()}

