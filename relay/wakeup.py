"""How the relay learns that work is due: LISTEN/NOTIFY, the next due time, and a poll.

The ``outbox.notify_pending`` trigger sends one NOTIFY per inserting
statement on channel ``tierbox_pending`` when it inserted a row of an urgent
tier (``outbox.tiers.notify``); Postgres folds duplicates within a
transaction and this class folds bursts into one wake-up per subscriber (an
Event each, so two lanes never clear each other's wake-up). Rows of other
tiers are found by the main lane's poll (``relay_poll_interval_s``). If the
listening connection dies, every lane polls while the listener reconnects.
This is the one swappable piece of the wake-up design: replace the trigger
and this class together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import psycopg

from outbox._logs import event

CHANNEL = "tierbox_pending"
#: Benchmark instrumentation (see ``relay.relay.HOPS``): each wake-up notes when it arrived.
_STAMP = os.environ.get("TIERBOX_BENCH_HOPS") == "1"
log = logging.getLogger("tierbox.relay")


class Wakeup:
    """One subscriber's wake-up: set by a NOTIFY (if subscribed to them) or by :meth:`poke`."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        #: Wall-clock time of the first wake-up since :meth:`clear` (noted only for the benchmark).
        self.poked_at = 0.0

    def clear(self) -> None:
        """Forget wake-ups seen so far (call before scanning)."""
        self._event.clear()
        self.poked_at = 0.0

    def poke(self) -> None:
        """Wake the waiter now (shutdown, tests)."""
        if _STAMP and not self._event.is_set():
            self.poked_at = time.time()
        self._event.set()

    async def wait(self, timeout_s: float) -> bool:
        """Wait for a wake-up, at most ``timeout_s``; True if one arrived."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), max(timeout_s, 0.0))
        return self._event.is_set()


class LaneGroup:
    """Hands each wake-up to one idle lane of a group (the urgent lanes of a relay process).

    A NOTIFY pokes the group, not every lane: every lane it woke would claim, and all but one would
    find the rows taken (an empty claim is a Postgres round trip and transaction). A wake-up that
    finds every lane in a batch is owed to the first lane that goes idle, which then claims at once,
    so no wake-up is lost. Several lanes exist so that a row committed while one lane waits for its
    batch's confirms and commit (about 7 ms at the median here) is claimed at once by another,
    instead of after that batch (bench/README.md, "Urgent lanes": not shown to help yet, so one lane is the default).
    """

    def __init__(self) -> None:
        self._idle: list[Wakeup] = []
        self._owed_at: float | None = None

    def poke(self) -> None:
        """A wake-up for the group: wake the lane that went idle last, or owe it to the next one."""
        if self._idle:
            self._idle.pop().poke()
        elif self._owed_at is None:
            self._owed_at = time.time()

    def idle(self, wakeup: Wakeup) -> None:
        """The lane of ``wakeup`` is about to wait: poke it now if a wake-up is owed, else list it idle."""
        if self._owed_at is None:
            self._idle.append(wakeup)
            return
        owed_at, self._owed_at = self._owed_at, None
        wakeup.poke()
        if _STAMP:
            wakeup.poked_at = owed_at  # the benchmark's "woken" is when the NOTIFY came, not this handover

    def busy(self, wakeup: Wakeup) -> None:
        """The lane of ``wakeup`` stopped waiting (woken or timed out): it is no longer idle."""
        with contextlib.suppress(ValueError):
            self._idle.remove(wakeup)


class Waker:
    """Listens on ``tierbox_pending`` and wakes every subscriber on each notification."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._subscribers: list[Wakeup | LaneGroup] = []
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    def subscribe(self) -> Wakeup:
        """A new wake-up that every NOTIFY sets (and the reconnect of the listener)."""
        wakeup = Wakeup()
        self._subscribers.append(wakeup)
        return wakeup

    def group(self) -> LaneGroup:
        """A new :class:`LaneGroup` that every NOTIFY pokes (one idle lane of it per wake-up)."""
        group = LaneGroup()
        self._subscribers.append(group)
        return group

    def unsubscribe(self, wakeup: Wakeup | LaneGroup) -> None:
        """Stop waking ``wakeup``."""
        with contextlib.suppress(ValueError):
            self._subscribers.remove(wakeup)

    def start(self) -> None:
        """Start listening in the background (reconnecting on its own)."""
        self._task = asyncio.create_task(self._listen_forever(), name="tierbox-relay-listen")

    async def stop(self) -> None:
        """Stop listening."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _wake_all(self) -> None:
        for wakeup in self._subscribers:
            wakeup.poke()

    async def _listen_forever(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, application_name="tierbox-relay-listen"
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening, delay = True, 0.5
                    self._wake_all()  # anything committed while we were deaf
                    event(log, "relay.listening", channel=CHANNEL)
                    async for _ in conn.notifies():
                        self._wake_all()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: poll meanwhile and reconnect
                if self.listening:
                    event(log, "relay.listen_lost", logging.WARNING, error=exc)
                self.listening = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
