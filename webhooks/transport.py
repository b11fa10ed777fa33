"""One HTTP POST of a webhook, pinned to an address the SSRF guard admitted.

The host is resolved and checked (:func:`outbox.webhooks.check_url`) right before connecting, and
the connection goes to that checked address (the URL's host stays in ``Host`` and in TLS SNI and
certificate checks through httpx's ``sni_hostname`` extension): a DNS answer that changes between
the check and the connection cannot send the request elsewhere. Redirects are not followed (their
target was never checked), proxies from the environment are not used (they would bypass the pin),
every phase has a timeout and at most :data:`MAX_RESPONSE_BYTES` of the answer are read.
"""

from __future__ import annotations

import asyncio
import ipaddress
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec

from outbox.webhooks import IPAddress, check_url, refusal

#: Seconds to establish the connection (TCP and TLS), to wait for each read, and overall.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
TOTAL_TIMEOUT_S = 15.0
#: Most bytes of a response body read (the rest is dropped unread); a receiver owes us only its status.
MAX_RESPONSE_BYTES = 64 * 1024
#: Characters of a response body kept in an error message.
SNIPPET_CHARS = 200
USER_AGENT = "tierbox-webhooks/1"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The limits of one delivery's request (defaults: the module's constants, docs/webhooks.md)."""

    #: Seconds to establish the connection (TCP and TLS).
    connect_s: float = CONNECT_TIMEOUT_S
    #: Seconds to wait for each read of the answer.
    read_s: float = READ_TIMEOUT_S
    #: Seconds for the whole request (resolution, connection, sending, the answer): a receiver that
    #: trickles its answer a byte at a time never trips the read timeout, this one it does.
    total_s: float = TOTAL_TIMEOUT_S
    #: Bytes of the response body read at most.
    max_response_bytes: int = MAX_RESPONSE_BYTES


#: The limits deliveries use.
LIMITS = Limits()


class Answer(msgspec.Struct, frozen=True):
    """What the receiver answered."""

    status: int
    snippet: str
    truncated: bool
    retry_after: str | None


def pinned(url: str, address: IPAddress) -> tuple[str, str, dict[str, str]]:
    """The URL with ``address`` as its host, the Host header, and httpx extensions (TLS SNI)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal + (f":{parts.port}" if parts.port else "")
    host_header = parts.netloc.rsplit("@", 1)[-1]
    extensions = {"sni_hostname": host} if parts.scheme == "https" and not _is_ip(host) else {}
    return urlunsplit(parts._replace(netloc=netloc)), host_header, extensions


async def post(url: str, body: bytes, headers: dict[str, str], limits: Limits = LIMITS) -> Answer:
    """POST ``body`` to ``url``; raises :class:`outbox.webhooks.WebhookError` if the address is refused
    now, ``httpx.TransportError`` (connect, TLS, timeout, protocol) if no answer came.

    ``limits``' connect and read timeouts apply here; its total is the caller's to enforce
    (:func:`tierbox.webhooks.deliver.send`), around this call and the resolution in it.
    """
    addresses = await asyncio.to_thread(check_url, url)  # getaddrinfo blocks: not on the event loop
    # check_url admitted every address (or the host is allow-listed); prefer a public one.
    address = sorted(addresses, key=lambda a: refusal(a) is not None)[0]
    target, host_header, extensions = pinned(url, address)
    timeout = httpx.Timeout(limits.read_s, connect=limits.connect_s, pool=limits.connect_s)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        request = client.build_request("POST", target, content=body, extensions=extensions, headers={
            **headers, "host": host_header, "content-type": "application/json", "user-agent": USER_AGENT})
        response = await client.send(request, stream=True)
        try:
            cap = limits.max_response_bytes
            chunks, size, truncated = [], 0, False
            async for chunk in response.aiter_raw():
                chunks.append(chunk[: max(cap - size, 0)])
                size += len(chunk)
                if size > cap:  # more than the cap arrived: the rest is not read (a body of exactly
                    truncated = True  # the cap reads one more, empty, chunk and is not truncated)
                    break
        finally:
            await response.aclose()
    text = b"".join(chunks).decode("utf-8", "replace")
    return Answer(response.status_code, text[:SNIPPET_CHARS], truncated, response.headers.get("retry-after"))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
