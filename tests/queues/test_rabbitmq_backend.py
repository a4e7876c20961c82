"""What only the RabbitMQ backend has: topology, confirms and returns, limits, failover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import aiormq
import pytest

from engine.errors import ConfigError
from queues.contract import Envelope, QueueFull, QueueUnavailable
from queues.rabbitmq.backend import RabbitQueue
from tests.queues.queue_support import Broker, Taker, delete_topology, rabbitmqctl

pytestmark = pytest.mark.rabbitmq

Q = "dest:his/cdr"

@pytest.fixture
async def backends(broker: Broker, prefix: str) -> AsyncIterator[Callable[..., Any]]:
    """Start backends on this test's prefix (several stand for several engines)."""
    started: list[RabbitQueue] = []

    async def make(**overrides: Any) -> RabbitQueue:
        backend = broker.config(prefix, **overrides).build()
        await backend.start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await backend.close()
    await delete_topology(broker, prefix, [Q, "dest:his/ordered", "channel:x"])


def envelopes(n: int) -> list[Envelope]:
    return [Envelope(f"M{i}", f"body {i}".encode(), {}, "hl7v2") for i in range(n)]


async def test_topology_is_declared_idempotently_and_a_changed_setting_is_refused(
    backends: Callable[..., Any], broker: Broker, prefix: str,
) -> None:
    first = await backends()
    await first.declare(Q)
    await first.declare(Q)
    second = await backends()  # another engine on the same broker
    await second.declare(Q)
    if broker.administered:
        listing = rabbitmqctl("list_queues", "-p", broker.vhost, "name", "type", "arguments")
        rows = {line.split("\t")[0]: line for line in listing.stdout.splitlines()}
        work = rows[f"{prefix}.{Q}"]
        assert "quorum" in work and "x-delivery-limit" in work and "x-dead-letter-exchange" in work
        assert "quorum" in rows[f"{prefix}.{Q}.dead"]
        assert "x-message-ttl" in rows[f"{prefix}.{Q}.delay.5s"]
    # The same queue wanted ordered is a different queue: refused with what to do.
    third = await backends()
    with pytest.raises(ConfigError, match=r"exists with other settings.*drain the queue"):
        await third.declare(Q, ordered=True)


async def test_many_publishes_are_confirmed_together(backends: Callable[..., Any]) -> None:
    backend = await backends(confirm_window=50)
    await backend.declare(Q)
    started = time.monotonic()
    await backend.publish(Q, envelopes(2000))
    assert await backend.depth(Q) == 2000
    # 2000 confirmed publishes, at most 50 awaiting the broker at once; one at a time
    # this takes several seconds on this machine.
    assert time.monotonic() - started < 10


async def test_acks_go_out_together_and_a_closing_consumer_sends_those_still_waiting(
    backends: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = await backends()
    await backend.declare(Q)
    await backend.publish(Q, envelopes(60))
    frames: list[tuple[int, bool]] = []
    sent = aiormq.Channel.basic_ack

    async def counted(self: aiormq.Channel, tag: int, multiple: bool = False,
                      wait: bool = True) -> None:
        frames.append((tag, multiple))
        await sent(self, tag, multiple=multiple, wait=wait)

    monkeypatch.setattr(aiormq.Channel, "basic_ack", counted)
    taker = Taker(backend.consumer(Q, prefetch=200))
    for _ in range(60):
        await backend.ack(await taker.next())
    await taker.close()  # right after the last ack: what still waits goes out first
    assert len(frames) < 10, frames  # 60 acks in a few ``multiple`` frames
    assert await backend.depth(Q) == 0
    again = Taker(backend.consumer(Q))
    await again.none_within(0.5)  # nothing is delivered again
    await again.close()


async def test_acks_reach_the_broker_in_order_when_the_connection_is_busy(
    backends: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``multiple`` ack must not overtake the single acks of an earlier flush.

    On a busy connection a frame waits for room in aiormq's write queue, and a flush's
    acks can stop half-way while a later flush runs. Had its ``multiple`` ack gone out
    first, the earlier flush's next single ack would name a tag already acked, and the
    broker would close the channel for it, sending every unacked message again.
    """
    backend = await backends(min_prefetch=8)  # acks flush in twos
    await backend.declare(Q)
    await backend.publish(Q, envelopes(8))
    taker = Taker(backend.consumer(Q, prefetch=8))
    got = {d.tag: d for d in [await taker.next() for _ in range(8)]}
    first = min(got)
    channel = got[first].backend_state.channel
    queue = channel.write_queue
    put = queue.put

    async def busy_put(frame: Any) -> None:
        await asyncio.sleep(0)  # waits for room, as on a full write queue
        await put(frame)

    monkeypatch.setattr(queue, "put", busy_put)
    # Two flushes planned back to back: the first acks two tags singly (the oldest is
    # still unsettled), the second acks up to the fourth in one ``multiple`` frame.
    for tag in (first + 1, first + 2, first, first + 3):
        await backend.ack(got[tag])
    await asyncio.sleep(0.3)
    for tag in range(first + 4, first + 8):
        await backend.ack(got[tag])
    await asyncio.sleep(0.3)
    assert not channel.is_closed
    await taker.close()
    assert await backend.depth(Q) == 0
    again = Taker(backend.consumer(Q))
    await again.none_within(0.5)
    await again.close()


async def test_a_message_the_broker_cannot_route_is_a_failure(
    backends: Callable[..., Any], broker: Broker, prefix: str,
) -> None:
    backend = await backends()
    await backend.declare(Q)
    connection = await aio_pika.connect(broker.url())
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(f"{prefix}.{Q}")  # gone behind the engine's back
    with pytest.raises(QueueUnavailable, match="could not route"):
        await backend.publish(Q, envelopes(1))


async def test_a_full_queue_refuses_and_the_source_can_push_back(
    backends: Callable[..., Any],
) -> None:
    backend = await backends(max_length=3)
    await backend.declare(Q)
    await backend.publish(Q, envelopes(3))
    # A quorum queue notices it is full one message late: it may hold max_length + 1.
    with pytest.raises(QueueFull, match="queue full"):  # noqa: PT012
        for i in range(2):
            await backend.publish(Q, [Envelope(f"X{i}", b"x", {}, "hl7v2")])
    assert await backend.depth(Q) in (3, 4)


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_message_that_kills_its_consumer_is_dead_lettered_at_the_delivery_limit(
    backends: Callable[..., Any], queue_type: str,
) -> None:
    backend = await backends(queue_type=queue_type, delivery_limit=2)
    await backend.declare(Q)
    await backend.publish(Q, envelopes(1))
    handed_out = 0
    while True:
        taker = Taker(backend.consumer(Q, prefetch=1))
        try:
            await taker.next(within=2)
        except AssertionError:  # nothing comes any more: it was dead-lettered
            await taker.close()
            break
        handed_out += 1
        await taker.close()  # the consumer "crashes": the message is never settled
        assert handed_out <= 5, "the delivery limit did not stop the loop"
    assert handed_out == 3  # the first delivery and two redeliveries
    [dead] = await backend.dead_letters(Q)
    assert dead.envelope.message_id == "M0"
    assert dead.reason.startswith("delivery limit reached: handed out")
    assert await backend.requeue(Q, [dead.id]) == 1
    taker = Taker(backend.consumer(Q, prefetch=1))
    again = await taker.next()
    assert again.envelope.message_id == "M0"
    await backend.ack(again)
    await taker.close()


async def test_unordered_consumers_take_at_least_the_minimum_prefetch(
    backends: Callable[..., Any],
) -> None:
    backend = await backends()
    await backend.declare(Q)
    await backend.declare("dest:his/ordered", ordered=True)
    assert backend.consumer(Q, prefetch=16).prefetch == 100  # type: ignore[attr-defined]
    assert backend.consumer("dest:his/ordered", prefetch=16,  # type: ignore[attr-defined]
                            ordered=True).prefetch == 1
    await backend.declare("channel:x")
    with pytest.raises(ConfigError, match="declared unordered"):
        backend.consumer("channel:x", ordered=True)


async def test_an_ordered_queue_has_one_active_consumer_and_fails_over_in_order(
    backends: Callable[..., Any],
) -> None:
    one, two = await backends(), await backends()  # two engines
    for backend in (one, two):
        await backend.declare(Q, ordered=True)
    await one.publish(Q, envelopes(6))
    first = Taker(one.consumer(Q, ordered=True))
    second = Taker(two.consumer(Q, ordered=True))
    got = await first.next()
    assert got.envelope.message_id == "M0"
    await second.none_within(0.5)  # the standby gets nothing
    await one.ack(got)
    assert (await first.next()).envelope.message_id == "M1"
    await first.close()  # the active engine stops with M1 unsettled
    order = []
    for _ in range(5):
        delivery = await second.next()
        order.append(delivery.envelope.message_id)
        await two.ack(delivery)
    assert order == ["M1", "M2", "M3", "M4", "M5"]
    await second.close()


async def test_a_long_delay_hops_through_the_tiers_and_is_never_early(
    backends: Callable[..., Any],
) -> None:
    backend = await backends(delay_tiers=[0.3, 1.0])
    await backend.declare(Q)
    started = time.time()
    await backend.publish(Q, envelopes(1), delay=2.2)
    taker = Taker(backend.consumer(Q, prefetch=10))
    delivery = await taker.next(within=6)
    assert time.time() - started >= 2.15
    assert delivery.envelope.message_id == "M0"
    await backend.ack(delivery)
    await taker.close()
