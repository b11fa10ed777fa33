"""The finishing stage: a delivery whose handler has returned is finished here, outside its slot.

A slot is held from its delivery's start to its handler's return, and no longer: recording the
outcome (a sessionless success's ``SUCCEED``, a retry, a dead letter: one commit and its WAL
flush each), releasing the admission and acking the message happen in a task of this stage while
the slot takes the next delivery. Each slot's occupancy then has one WAL flush (its start), not two.

What does not change (:mod:`workers.processing` keeps it):

* **outcome before ack, once**: the task runs the delivery's one
  :meth:`Delivery.finish <tierbox.workers.delivery.Delivery.finish>`, which records, then
  releases, then acks; nothing else may finish that delivery.
* **a crash loses nothing**: until the task has acked, the message is unacked, so a killed
  worker's messages go back to their queue, and the job's lease (renewed by the heartbeat while
  the job is in ``Processor.running``, where it stays until its finish is done) and the reaper
  decide, as for a worker killed while its handler ran.
* **in flight**: the pool counts a finishing delivery as in hand (drain waits for it, shutdown
  records and acks it before closing) and keeps its job in the set the reconciler reads
  (:mod:`workers.inflight`) until the task is done.

Bounded: every delivery here holds an unacked message (long tasks, acked early, never come
here), and the broker hands a pool no more unacked messages than its channels' QoS, so the stage
cannot grow past the pool's prefetch windows. That holds per connection; deliveries of a
connection that dropped may still be finishing after a reconnect, so :attr:`Finishing.full` also
bounds it explicitly: when full, a slot finishes its delivery itself, as before this stage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierbox.workers.delivery import Delivery


class Finishing:
    """The deliveries being finished outside their slots, one task each.

    ``bound``: the most deliveries it takes (:attr:`full`). ``done`` is called with each delivery
    once its task has ended, however it ended (the pool's bookkeeping: in-flight set, deliveries in hand).
    """

    def __init__(self, bound: int, done: Callable[[Delivery], None] | None = None) -> None:
        self.bound = bound
        self.done = done
        self._tasks: dict[asyncio.Task[None], Delivery] = {}
        self._empty = asyncio.Event()
        self._empty.set()
        #: Deliveries handed to the stage so far.
        self.handed = 0

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def full(self) -> bool:
        """Whether the stage holds :attr:`bound` deliveries (a slot then finishes its own)."""
        return len(self._tasks) >= self.bound

    def start(self, delivery: Delivery, finish: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``finish`` (the delivery's finishing) in a task of the stage; returns the task.

        Synchronous on purpose: once this returns the stage owns the delivery, with no await in
        between at which a cancelled slot could drop it.
        """
        task = asyncio.create_task(finish, name="tierbox-finish")
        self._tasks[task] = delivery
        self.handed += 1
        self._empty.clear()
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        delivery = self._tasks.pop(task)
        if not self._tasks:
            self._empty.set()
        if self.done is not None:
            self.done(delivery)

    async def wait(self) -> None:
        """Return once no delivery is being finished."""
        await self._empty.wait()

    async def cancel(self) -> None:
        """Cancel every finishing still running (shutdown, after its bound): their messages are
        unacked, so they go back to their queues when the connection closes, and leases cover their jobs."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
