"""How the relay learns that work is due: LISTEN/NOTIFY, the next due time, and a poll.

The ``outbox.notify_pending`` trigger sends one NOTIFY per inserting
statement on channel ``tierbox_pending``; Postgres folds duplicates within a
transaction and this class folds bursts into one wake-up (an Event). If the
listening connection dies, the relay still polls every
``relay_poll_interval_s`` while the listener reconnects. This is the one
swappable piece of the wake-up design: replace the trigger and this class
together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from outbox.logs import event

CHANNEL = "tierbox_pending"
log = logging.getLogger("tierbox.relay")


class Waker:
    """Set when a NOTIFY arrives; :meth:`wait` returns on it or on timeout."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    def start(self) -> None:
        """Start listening in the background (reconnecting on its own)."""
        self._task = asyncio.create_task(self._listen_forever(), name="tierbox-relay-listen")

    async def stop(self) -> None:
        """Stop listening."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def clear(self) -> None:
        """Forget wake-ups seen so far (call before scanning)."""
        self._event.clear()

    def poke(self) -> None:
        """Wake the waiter now (shutdown, tests)."""
        self._event.set()

    async def wait(self, timeout_s: float) -> bool:
        """Wait for a notification, at most ``timeout_s``; True if one arrived."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), max(timeout_s, 0.0))
        return self._event.is_set()

    async def _listen_forever(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, application_name="tierbox-relay-listen"
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening, delay = True, 0.5
                    self._event.set()  # anything committed while we were deaf
                    event(log, "relay.listening", channel=CHANNEL)
                    async for _ in conn.notifies():
                        self._event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: poll meanwhile and reconnect
                if self.listening:
                    event(log, "relay.listen_lost", logging.WARNING, error=exc)
                self.listening = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
