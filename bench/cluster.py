"""Classic vs quorum tier queues on a three-node RabbitMQ cluster: the cost of replication, and what a node loss does.

Run: ``python -m bench.cluster [--messages N] [--reps R]`` (starts its own cluster with
``scripts/rabbitmq-cluster``, nodes ``tbcbench1..3``, and stops it after; needs root and the
``rabbitmq-server`` package, like the tests' clusters).

Per queue type, the queue lives on node 2 (declared through it: a classic queue's home, a quorum
queue's first leader) and the client is connected to node 1, as a process on another host would be.

* Throughput: N persistent messages published with publisher confirms, windows of 500 in flight
  (the relay's default batch), messages per second until the last confirm.
* Latency: one message at a time published while a consumer (prefetch 10) waits: publish ->
  delivery p50/p99 over N/10 messages (the broker's share of commit-to-start).
* Priority under a backlog: 200 messages of priority 3 queued, then 20 of priority 9 (a tier's
  urgent jobs arriving behind its backlog, as ``calls`` recordings behind summaries); then a
  consumer takes all 220: the positions (0-based) the priority-9 messages are delivered at.
* Node loss: 200 messages queued, node 2 SIGKILLed; then, through node 1, seconds until a publish
  is confirmed again, and how many of the 200 a consumer gets within LOSS_WINDOW_S.

Classic and quorum alternate within each repetition; ratios are quorum / classic of the same run.
Classic queues carry ``x-max-priority: 10`` as the urgent tiers' do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from statistics import median

import aio_pika

ROOT = Path(__file__).resolve().parent.parent
NAME = "tbcbench"
BASE_PORT = 25772
RABBIT_DIR = Path(os.environ.get("TIERBOX_RABBIT_DIR", "/tmp/tierbox-rabbit"))
URLS = [f"amqp://guest:guest@127.0.0.1:{BASE_PORT + i}/" for i in range(3)]
#: How long the node-loss part waits for publishes and the queued messages.
LOSS_WINDOW_S = 20.0
ARGS = {"classic": {"x-queue-type": "classic", "x-max-priority": 10}, "quorum": {"x-queue-type": "quorum"}}


def cluster(cmd: str) -> None:
    """``scripts/rabbitmq-cluster cmd`` for the bench's own nodes."""
    env = {**os.environ, "CLUSTER_NAME": NAME}
    subprocess.run([str(ROOT / "scripts" / "rabbitmq-cluster"), cmd, str(BASE_PORT)], env=env, check=cmd == "start",
                   capture_output=True, timeout=300)


async def declare(kind: str, name: str) -> None:
    """Declare queue ``name`` through node 2, so it lives there."""
    conn = await aio_pika.connect(URLS[1])
    async with conn:
        ch = await conn.channel()
        await ch.declare_queue(name, durable=True, arguments=ARGS[kind])


async def throughput(kind: str, name: str, n: int) -> float:
    """Confirmed publishes per second, 500 in flight at most."""
    conn = await aio_pika.connect(URLS[0])
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        body = b"x" * 300
        began = time.perf_counter()
        for start in range(0, n, 500):
            await asyncio.gather(*(ch.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, priority=5), name)
                for _ in range(min(500, n - start))))
        elapsed = time.perf_counter() - began
        await (await ch.get_queue(name, ensure=False)).purge()
    return n / elapsed


async def latency(name: str, n: int) -> tuple[float, float]:
    """Publish -> delivery p50 and p99, in ms, one message at a time."""
    conn = await aio_pika.connect(URLS[0])
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        await ch.set_qos(prefetch_count=10)
        queue = await ch.get_queue(name, ensure=False)
        got: asyncio.Queue[float] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await got.put(time.perf_counter())
            await message.ack()

        await queue.consume(on_message)
        samples = []
        for _ in range(n):
            sent = time.perf_counter()
            await ch.default_exchange.publish(aio_pika.Message(b"x", delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                                               priority=5), name)
            samples.append((await got.get() - sent) * 1000)
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


async def priority_positions(name: str) -> tuple[int, int]:
    """First and last delivery position of 20 priority-9 messages queued behind 200 of priority 3."""
    conn = await aio_pika.connect(URLS[0])
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        for prio, n in ((3, 200), (9, 20)):
            await asyncio.gather(*(ch.default_exchange.publish(
                aio_pika.Message(str(prio).encode(), delivery_mode=2, priority=prio), name) for _ in range(n)))
        queue = await ch.get_queue(name, ensure=False)
        positions = []
        for i in range(220):
            message = await queue.get(timeout=10)
            if message.body == b"9":
                positions.append(i)
            await message.ack()
    return positions[0], positions[-1]


async def node_loss(name: str) -> tuple[float | None, int]:
    """200 queued, node 2 killed: seconds until a publish is confirmed again (None: not within LOSS_WINDOW_S) and
    how many of the 200 a consumer on node 1 gets within LOSS_WINDOW_S."""
    conn = await aio_pika.connect(URLS[0])
    async with conn:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        for i in range(200):
            await ch.default_exchange.publish(aio_pika.Message(str(i).encode(), delivery_mode=2), name)
        os.kill(int((RABBIT_DIR / f"{NAME}2" / "pid").read_text()), signal.SIGKILL)
        killed = time.perf_counter()
        confirmed_after = None
        while time.perf_counter() - killed < LOSS_WINDOW_S and confirmed_after is None:
            try:
                if ch.is_closed:
                    ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
                await ch.default_exchange.publish(aio_pika.Message(b"probe", delivery_mode=2), name, mandatory=True,
                                                  timeout=2)
                confirmed_after = time.perf_counter() - killed
            except Exception:  # noqa: BLE001 - nacked, returned, timed out or channel closed: not yet
                await asyncio.sleep(0.2)
        got = 0
        while time.perf_counter() - killed < LOSS_WINDOW_S and got < 200:
            try:
                consumer = await conn.channel()
                queue = await consumer.get_queue(name, ensure=False)
                while got < 200:
                    message = await queue.get(fail=False, timeout=2)
                    if message is None:
                        break
                    if message.body != b"probe":
                        got += 1
                    await message.ack()
            except Exception:  # noqa: BLE001 - the queue is down: try again
                await asyncio.sleep(0.5)
            if got < 200:
                await asyncio.sleep(0.5)
    return confirmed_after, got


async def run(messages: int, reps: int) -> None:
    results: dict[str, dict[str, list[float]]] = {k: {"tput": [], "p50": [], "p99": []} for k in ARGS}
    for rep in range(reps):
        for kind in ARGS:
            name = f"bench-{kind}-{rep}"
            await declare(kind, name)
            results[kind]["tput"].append(await throughput(kind, name, messages))
            p50, p99 = await latency(name, max(50, messages // 10))
            results[kind]["p50"].append(p50)
            results[kind]["p99"].append(p99)
    print(f"{reps} reps, {messages} messages; client on node 1, queue on node 2 (medians of reps)")
    print(f"{'':<34}{'classic (prio 10)':>18}{'quorum':>12}{'quorum/classic':>16}")
    for key, label in (("tput", "confirmed publishes / s"), ("p50", "publish -> delivery p50 ms"),
                       ("p99", "publish -> delivery p99 ms")):
        c, q = median(results["classic"][key]), median(results["quorum"][key])
        print(f"{label:<34}{c:>18.1f}{q:>12.1f}{q / c:>16.2f}")
    for kind in ARGS:
        name = f"bench-prio-{kind}"
        await declare(kind, name)
        first, last = await priority_positions(name)
        print(f"priority under a backlog, {kind}: the 20 priority-9 messages delivered at positions {first}..{last} "
              f"of 220 (200 priority-3 ones queued first)")
    for kind in ARGS:
        name = f"bench-loss-{kind}"
        await declare(kind, name)
        confirmed_after, got = await node_loss(name)
        again = f"{confirmed_after:.2f} s" if confirmed_after is not None else f"not within {LOSS_WINDOW_S:.0f} s"
        print(f"node loss, {kind}: publishes confirmed again after {again}; {got}/200 queued messages "
              f"consumed within {LOSS_WINDOW_S:.0f} s")
        await asyncio.to_thread(subprocess.run, [str(ROOT / "scripts" / "rabbitmq-node"), "start", f"{NAME}2",
                                str(BASE_PORT + 1)], capture_output=True, timeout=180, check=True)
        await asyncio.sleep(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    cluster("start")
    try:
        asyncio.run(run(args.messages, args.reps))
    finally:
        cluster("stop")


if __name__ == "__main__":
    main()
