"""The pool's local priority buffer: strict priority, in-queue priority, minimum shares."""

from __future__ import annotations

from tierbox.workers.buffer import PriorityBuffer

WEIGHTS = {"critical": 10, "high": 8}


async def take(buf: PriorityBuffer, n: int) -> list[str]:
    return [(await buf.get())[1] for _ in range(n)]


async def test_highest_tier_first_then_message_priority_then_fifo() -> None:
    buf = PriorityBuffer(WEIGHTS)
    await buf.put("high", 8, "h1")
    await buf.put("high", 8, "h2")
    await buf.put("critical", 1, "c-low")
    await buf.put("critical", 9, "c-high")
    assert await take(buf, 4) == ["c-high", "c-low", "h1", "h2"]


async def test_min_share_lets_lower_tier_progress_under_a_flood() -> None:
    buf = PriorityBuffer({"low": 3, "bulk": 1}, {"bulk": 0.1}, window=50)
    for i in range(500):
        await buf.put("low", 0, f"low{i}")
    for i in range(100):
        await buf.put("bulk", 0, f"bulk{i}")
    started = await take(buf, 200)
    bulk = [s for s in started if s.startswith("bulk")]
    assert 15 <= len(bulk) <= 25  # about 10% of starts, while LOW still had work waiting
    assert bulk == [f"bulk{i}" for i in range(len(bulk))]  # FIFO within the tier


async def test_zero_share_is_strict_priority() -> None:
    buf = PriorityBuffer({"low": 3, "bulk": 1})
    for i in range(50):
        await buf.put("low", 0, f"low{i}")
    await buf.put("bulk", 0, "bulk0")
    assert (await take(buf, 51))[-1] == "bulk0"


async def test_drain_returns_everything_waiting() -> None:
    buf = PriorityBuffer(WEIGHTS)
    await buf.put("high", 0, "h")
    await buf.put("critical", 0, "c")
    assert sorted(item for _, item in buf.drain()) == ["c", "h"]
    assert len(buf) == 0


async def test_reserved_waiter_takes_only_its_tier_and_never_swallows_a_wakeup() -> None:
    """A slot reserved for critical ignores high; a high put still wakes the general slot."""
    import asyncio

    buf = PriorityBuffer(WEIGHTS)
    reserved = asyncio.create_task(buf.get(only="critical"))
    general = asyncio.create_task(buf.get())
    await asyncio.sleep(0)  # both wait
    await buf.put("high", 0, "h")
    got_general = await asyncio.wait_for(general, 1)
    assert got_general == ("high", "h")
    assert not reserved.done()  # the high message was not for it, and it is still waiting
    await buf.put("critical", 0, "c")
    assert await asyncio.wait_for(reserved, 1) == ("critical", "c")
    assert len(buf) == 0


async def test_reserved_and_general_waiters_share_a_critical_burst() -> None:
    import asyncio

    buf = PriorityBuffer(WEIGHTS)
    waiters = [asyncio.create_task(buf.get(only="critical")), asyncio.create_task(buf.get())]
    await asyncio.sleep(0)
    await buf.put("critical", 0, "c1")
    await buf.put("critical", 0, "c2")
    got = await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert sorted(item for _, item in got) == ["c1", "c2"]  # each waiter got one: no wake-up lost


async def test_a_general_slot_leaves_critical_to_an_idle_reserved_slot_and_takes_high() -> None:
    """Every slot waits; critical and high arrive together: the reserved slot runs critical and the
    general slot high, not the general slot critical while the reserved one idles (and high waits)."""
    import asyncio

    buf = PriorityBuffer(WEIGHTS)
    general = asyncio.create_task(buf.get())
    reserved = asyncio.create_task(buf.get(only="critical"))
    await asyncio.sleep(0)  # both wait; the general slot has waited longest
    await buf.put("critical", 0, "c")
    await buf.put("high", 0, "h")
    assert await asyncio.wait_for(general, 1) == ("high", "h")
    assert await asyncio.wait_for(reserved, 1) == ("critical", "c")
    # More critical messages than idle reserved slots: the general slot takes the surplus.
    reserved = asyncio.create_task(buf.get(only="critical"))
    general = asyncio.create_task(buf.get())
    await asyncio.sleep(0)
    await buf.put("critical", 0, "c1")
    await buf.put("critical", 0, "c2")
    got = await asyncio.wait_for(asyncio.gather(reserved, general), 1)
    assert sorted(item for _, item in got) == ["c1", "c2"]


async def test_a_cancelled_reserved_slot_hands_its_tier_back_to_general_slots() -> None:
    import asyncio

    buf = PriorityBuffer(WEIGHTS)
    reserved = asyncio.create_task(buf.get(only="critical"))
    await asyncio.sleep(0)
    general = asyncio.create_task(buf.get())
    await asyncio.sleep(0)
    # Put without letting the reserved slot run, then cancel it: the general slot must take c.
    buf._heaps["critical"].append((0, -1, "c"))  # what put() pushes, minus its wake-ups
    reserved.cancel()
    assert await asyncio.wait_for(general, 1) == ("critical", "c")
