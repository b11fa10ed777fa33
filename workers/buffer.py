"""Strict priority between a pool's queues, with a minimum share against starvation.

RabbitMQ round-robins between the consumers of different queues, so a pool
that consumes ``critical`` and ``high`` on one connection would start their
messages in arrival order. Tierbox puts one consumer per queue, each with a
small QoS (``concurrency + prefetch`` unacked messages, and a running job
stays unacked), and lets every delivery land in this local buffer. Worker
slots take from the buffer, never from the broker, so when a slot frees the
message it starts is chosen here:

1. Anti-starvation first: if some waiting queue's share of the last
   ``window`` starts is below its configured ``min_share``, take from it
   (the lowest-weight such queue first, since it is the one that starves).
2. Otherwise strict priority: the highest tier weight that has a message.
3. Within a queue: the message's AMQP priority, then arrival order.

Reserved slots (``PoolSpec.reserved``) wait for their one tier only
(:meth:`PriorityBuffer.get` with ``only``); they count in the shares like any start. A message
an idle reserved slot is waiting for is left to that slot: a general slot takes it only if
there are more such messages than idle reserved slots, so it stays free for the other tiers
instead of running a critical job while the critical slot idles.

Trade-off: a ``min_share`` of 0.1 means that under a sustained flood of a
higher tier, one start in ten goes to the lower tier, so the higher tier's
wait grows by about that much; a share of 0 gives pure strict priority and
lets a flood starve the lower queue indefinitely. In-queue priority (CALLS'
per-task priorities) survives because the broker holds all but a few
messages and hands them out in priority order.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Mapping
from typing import Any

DEFAULT_WINDOW = 100


class PriorityBuffer:
    """Messages waiting for a free slot, taken in tier-priority order with minimum shares."""

    def __init__(self, weights: Mapping[str, int], min_share: Mapping[str, float] | None = None,
                 window: int = DEFAULT_WINDOW) -> None:
        self._weights = dict(weights)
        self._min_share = {t: s for t, s in (min_share or {}).items() if s > 0}
        self._heaps: dict[str, list[tuple[int, int, Any]]] = {t: [] for t in weights}
        self._recent: deque[str] = deque(maxlen=window)
        self._seq = itertools.count()
        lock = asyncio.Lock()
        self._ready = asyncio.Condition(lock)
        # One condition per tier for reserved slots: a put wakes one slot of each kind that can take
        # it, so a reserved slot never swallows the wake-up of a message it may not start.
        self._ready_for = {t: asyncio.Condition(lock) for t in weights}
        #: Reserved slots waiting, per tier: the messages they will take are not for general slots.
        self._reserved_idle = dict.fromkeys(weights, 0)
        self._by_weight = sorted(weights, key=lambda t: -weights[t])
        self._starving_order = sorted(self._min_share, key=lambda t: weights[t])

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())

    def waiting(self, tier: str) -> int:
        """Messages of ``tier`` waiting for a slot."""
        return len(self._heaps[tier])

    async def put(self, tier: str, priority: int, item: Any) -> None:
        """Add a delivery of ``tier`` with its AMQP priority."""
        heapq.heappush(self._heaps[tier], (-priority, next(self._seq), item))
        async with self._ready:
            self._ready.notify()
            self._ready_for[tier].notify()

    async def get(self, only: str | None = None) -> tuple[str, Any]:
        """Wait for a message and take the one the policy picks (of tier ``only``, if given)."""
        async with self._ready:
            if only is None:
                await self._ready.wait_for(lambda: any(self._for_general(t) > 0 for t in self._heaps))
                tier = self.pick()
            else:
                self._reserved_idle[only] += 1
                try:
                    await self._ready_for[only].wait_for(lambda: len(self._heaps[only]) > 0)
                except BaseException:
                    self._reserved_idle[only] -= 1
                    if self._heaps[only]:  # cancelled (shutdown) with messages waiting: general slots' again
                        self._ready.notify()
                    raise
                self._reserved_idle[only] -= 1
                tier = only
            _, _, item = heapq.heappop(self._heaps[tier])
            self._recent.append(tier)
            return tier, item

    def _for_general(self, tier: str) -> int:
        """Messages of ``tier`` a general slot may take: those no idle reserved slot will."""
        return len(self._heaps[tier]) - self._reserved_idle[tier]

    def pick(self) -> str:
        """The tier a general slot's next start comes from (assumes one is waiting for it)."""
        if self._recent:
            for tier in self._starving_order:
                if self._for_general(tier) > 0 and self._recent.count(tier) / len(self._recent) < self._min_share[tier]:
                    return tier
        for tier in self._by_weight:
            if self._for_general(tier) > 0:
                return tier
        raise LookupError("nothing waiting for a general slot")

    def drain(self) -> list[tuple[str, Any]]:
        """Remove and return everything waiting (shutdown)."""
        out = [(t, entry[2]) for t, heap in self._heaps.items() for entry in heap]
        for heap in self._heaps.values():
            heap.clear()
        return out
