"""Reading a Server-Sent Events stream with httpx, as a browser's EventSource parses it."""

from __future__ import annotations

import json
from typing import Any

import httpx


class Stream:
    """What one connection received: events (id, event, data as JSON), comments, and whether the server closed it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.closed_by_server = False

    @property
    def ids(self) -> list[int]:
        return [int(e["id"]) for e in self.events]

    @property
    def kinds(self) -> list[str]:
        return [e["event"] for e in self.events]


def read(client: httpx.Client, url: str, *, headers: dict[str, str] | None = None, max_events: int | None = None,
         timeout: float = 60.0) -> Stream:
    """Read ``url`` until the server closes it, or until ``max_events`` events (then disconnect)."""
    out = Stream()
    with client.stream("GET", url, headers=headers, timeout=httpx.Timeout(timeout)) as response:
        assert response.status_code == 200, response.read().decode()
        assert response.headers["content-type"].startswith("text/event-stream"), response.headers
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "data" in fields:
                    out.events.append({"id": fields.get("id"), "event": fields.get("event", "message"),
                                       "data": json.loads(fields["data"])})
                    if max_events is not None and len(out.events) >= max_events:
                        return out
                fields = {}
            elif line.startswith(":"):
                out.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
        out.closed_by_server = True
    return out
