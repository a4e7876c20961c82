"""One contract, every backend: the same tests run on memory, SQLite and RabbitMQ.

The RabbitMQ backend runs twice: with quorum queues (the default) and with classic queues,
whose delivery limit and ordering are implemented differently (see queues/rabbitmq).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.database import Database
from engine.errors import TransientError
from engine.outcome import Action, decide
from engine.retry import RetryPolicy
from queues.contract import Envelope, QueueBackend
from queues.memory import MemoryQueue
from queues.rabbitmq.backend import RabbitQueue
from queues.sqlite import SqliteQueue
from tests.queues.queue_support import Broker, Taker, delete_topology

Q = "dest:his/cdr"
CHANNEL = "channel:his"


@pytest.fixture(params=[
    "memory",
    "sqlite",
    pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    pytest.param("rabbitmq-classic", marks=pytest.mark.rabbitmq),
])
async def backend(request: pytest.FixtureRequest, tmp_path: Path, prefix: str
                  ) -> AsyncIterator[QueueBackend]:
    kind = request.param
    if kind == "memory":
        memory = MemoryQueue()
        yield memory
        await memory.close()
        return
    if kind == "sqlite":
        db = Database(tmp_path / "queue.db")
        await db.open()
        sqlite = SqliteQueue(db)
        await sqlite.start()
        yield sqlite
        await sqlite.close()
        await db.close()
        return
    broker: Broker = request.getfixturevalue("broker")
    config = broker.config(
        prefix, queue_type="classic" if kind == "rabbitmq-classic" else "quorum",
        min_prefetch=1,
    )
    rabbit = config.build()
    await rabbit.start()
    try:
        yield rabbit
    finally:
        declared = list(rabbit._topologies)
        await rabbit.close()
        await delete_topology(broker, prefix, declared)


def envelopes(n: int, tag: str = "M") -> list[Envelope]:
    return [
        Envelope(f"{tag}{i}", f"MSH|^~\\&|HIS|{i}\r".encode() + bytes([0, 255, i]),
                 {"X-Source": "his", "科室": f"内科{i}"}, "hl7v2")
        for i in range(n)
    ]


async def test_published_envelopes_arrive_intact_and_ack_removes_them(
    backend: QueueBackend,
) -> None:
    await backend.declare(Q)
    sent = envelopes(3)
    await backend.publish(Q, sent)
    taker = Taker(backend.consumer(Q, prefetch=10))
    got = [await taker.next() for _ in range(3)]
    assert sorted((d.envelope for d in got), key=lambda e: e.message_id) == sent
    for d in got:
        assert (d.failures, d.first_failed_at, d.last_error) == (0, None, "")
        assert d.queue == Q
    for d in got:
        await backend.ack(d)
    await taker.none_within(0.3)
    assert await backend.depth(Q) == 0
    await taker.close()


async def test_prefetch_bounds_unsettled_deliveries(backend: QueueBackend) -> None:
    await backend.declare(Q)
    await backend.publish(Q, envelopes(5))
    taker = Taker(backend.consumer(Q, prefetch=2))
    first, second = await taker.next(), await taker.next()
    await taker.none_within(0.4)
    await backend.ack(first)
    third = await taker.next()
    assert len({first.envelope.message_id, second.envelope.message_id,
                third.envelope.message_id}) == 3
    await taker.close()


async def test_delayed_publish_is_invisible_until_due(backend: QueueBackend) -> None:
    await backend.declare(Q)
    started = time.time()
    await backend.publish(Q, envelopes(1, "LATER"), delay=1.2)
    taker = Taker(backend.consumer(Q, prefetch=10))
    await taker.none_within(0.8)
    delivery = await taker.next()
    assert time.time() - started >= 1.15
    assert delivery.envelope.message_id == "LATER0"
    await backend.ack(delivery)
    await taker.close()


async def test_retry_waits_until_its_time_and_counts_attempts(backend: QueueBackend) -> None:
    await backend.declare(Q)
    await backend.publish(Q, envelopes(1))
    taker = Taker(backend.consumer(Q, prefetch=10))
    first = await taker.next()
    failed_at = time.time()
    at = failed_at + 1.3
    await backend.retry(first, at=at, reason="peer answered AE")
    await taker.none_within(0.9)
    again = await taker.next()
    assert time.time() >= at - 0.05
    assert again.envelope == first.envelope
    assert again.failures == 1
    assert again.last_error == "peer answered AE"
    assert again.first_failed_at == pytest.approx(failed_at, abs=1.0)
    # A second failure keeps the first-failure time and counts on.
    await backend.retry(again, at=time.time() + 0.2, reason="timeout")
    third = await taker.next()
    assert (third.failures, third.last_error) == (2, "timeout")
    assert third.first_failed_at == again.first_failed_at
    await backend.ack(third)
    assert await backend.depth(Q) == 0
    await taker.close()


async def test_dead_letter_keeps_reason_and_history(backend: QueueBackend) -> None:
    await backend.declare(Q)
    [sent] = envelopes(1)
    await backend.publish(Q, [sent])
    taker = Taker(backend.consumer(Q, prefetch=10))
    first = await taker.next()
    failed_at = time.time()
    await backend.retry(first, at=time.time() + 0.1, reason="timeout")
    second = await taker.next()
    await backend.dead_letter(second, reason="peer answered AR: unknown patient")
    await taker.none_within(0.3)
    dead = await backend.dead_letters(Q)
    assert len(dead) == 1
    assert dead[0].envelope == sent
    assert dead[0].reason == "peer answered AR: unknown patient"
    assert dead[0].failures == 2
    assert dead[0].first_failed_at == pytest.approx(failed_at, abs=1.0)
    assert dead[0].dead_at >= dead[0].first_failed_at  # type: ignore[operator]
    assert dead[0].queue == Q
    assert await backend.depth(Q) == 0
    # Listing leaves the dead letter where it is.
    assert [d.id for d in await backend.dead_letters(Q)] == [dead[0].id]
    await taker.close()


async def test_retries_end_in_a_dead_letter_at_the_limit(backend: QueueBackend) -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=0.1, jitter=0.0)
    await backend.declare(Q)
    await backend.publish(Q, envelopes(1))
    taker = Taker(backend.consumer(Q, prefetch=10))
    actions = []
    for _ in range(3):
        delivery = await taker.next()
        outcome = decide(TransientError("peer answered AE"), failures_before=delivery.failures,
                         first_failed_at=delivery.first_failed_at, now=time.time(),
                         policy=policy)
        actions.append(outcome.action)
        if outcome.action is Action.RETRY:
            await backend.retry(delivery, at=outcome.retry_at, reason=outcome.reason)
        else:
            await backend.dead_letter(delivery, reason=outcome.reason)
    assert actions == [Action.RETRY, Action.RETRY, Action.DEAD_LETTER]
    await taker.none_within(0.3)
    [dead] = await backend.dead_letters(Q)
    assert dead.failures == 3
    assert dead.reason == "gave up after 3 attempts: peer answered AE"
    await taker.close()


async def test_requeue_some_or_all_dead_letters(backend: QueueBackend) -> None:
    await backend.declare(Q)
    await backend.publish(Q, envelopes(3))
    taker = Taker(backend.consumer(Q, prefetch=10))
    for _ in range(3):
        await backend.dead_letter(await taker.next(), reason="bad")
    dead = await backend.dead_letters(Q)
    assert sorted(d.envelope.message_id for d in dead) == ["M0", "M1", "M2"]
    assert len({d.id for d in dead}) == 3
    chosen = next(d for d in dead if d.envelope.message_id == "M1")
    assert await backend.requeue(Q, ["999999"]) == 0  # ids are opaque; an unknown one is no-op
    assert await backend.requeue(Q, [chosen.id]) == 1
    back = await taker.next()
    assert back.envelope == chosen.envelope
    assert (back.failures, back.first_failed_at) == (0, None)
    await backend.ack(back)
    assert sorted(d.envelope.message_id for d in await backend.dead_letters(Q)) == ["M0", "M2"]
    assert await backend.requeue(Q) == 2
    rest = [await taker.next(), await taker.next()]
    assert sorted(d.envelope.message_id for d in rest) == ["M0", "M2"]
    for d in rest:
        await backend.ack(d)
    assert await backend.requeue(Q) == 0
    assert await backend.dead_letters(Q) == []
    await taker.close()


async def test_depth_counts_waiting_and_scheduled_not_dead(backend: QueueBackend) -> None:
    await backend.declare(Q)
    assert await backend.depth(Q) == 0
    await backend.publish(Q, envelopes(4))
    assert await backend.depth(Q) == 4
    taker = Taker(backend.consumer(Q, prefetch=10))
    first = await taker.next()
    assert await backend.depth(Q) == 4  # handed out, not settled: still waiting
    await backend.ack(first)
    assert await backend.depth(Q) == 3
    await backend.retry(await taker.next(), at=time.time() + 60, reason="later")
    assert await backend.depth(Q) == 3  # scheduled for retry still counts
    await backend.dead_letter(await taker.next(), reason="bad")
    assert await backend.depth(Q) == 2
    await taker.close()


async def test_ordered_consumer_keeps_order_and_a_retry_holds_the_head(
    backend: QueueBackend,
) -> None:
    await backend.declare(Q, ordered=True)
    await backend.publish(Q, envelopes(5))
    taker = Taker(backend.consumer(Q, prefetch=50, ordered=True))
    head = await taker.next()
    assert head.envelope.message_id == "M0"
    await taker.none_within(0.3)  # one at a time
    at = time.time() + 0.5
    await backend.retry(head, at=at, reason="peer down")
    again = await taker.next()
    assert again.envelope.message_id == "M0"
    assert again.failures == 1
    assert again.not_before == pytest.approx(at, abs=0.01)
    await backend.retry(again, at=time.time() + 0.1, reason="peer down")
    third = await taker.next()
    assert (third.envelope.message_id, third.failures) == ("M0", 2)
    await backend.ack(third)
    order = []
    for _ in range(4):
        delivery = await taker.next()
        order.append(delivery.envelope.message_id)
        if delivery.envelope.message_id == "M2":
            await backend.dead_letter(delivery, reason="bad")
        else:
            await backend.ack(delivery)
    assert order == ["M1", "M2", "M3", "M4"]
    assert [d.envelope.message_id for d in await backend.dead_letters(Q)] == ["M2"]
    await taker.close()


async def test_unsettled_deliveries_come_again_after_the_consumer_dies(
    backend: QueueBackend,
) -> None:
    await backend.declare(Q)
    await backend.publish(Q, envelopes(3))
    first = Taker(backend.consumer(Q, prefetch=2))
    taken = {(await first.next()).envelope.message_id for _ in range(2)}
    await first.close()  # dies without settling what it took
    second = Taker(backend.consumer(Q, prefetch=10))
    seen = set()
    for _ in range(3):
        delivery = await second.next()
        seen.add(delivery.envelope.message_id)
        await backend.ack(delivery)
    assert taken < seen == {"M0", "M1", "M2"}
    await second.none_within(0.3)
    assert await backend.depth(Q) == 0
    await second.close()


async def test_due_retries_do_not_hide_ready_envelopes(backend: QueueBackend) -> None:
    """Retries due at once and new envelopes that arrived while the consumer was full are
    all delivered: the retries taking part of the prefetch must not make the consumer think
    it has read every ready envelope."""
    await backend.declare(Q)
    taker = Taker(backend.consumer(Q, prefetch=4))
    await backend.publish(Q, envelopes(4))
    first = [await taker.next() for _ in range(4)]
    await backend.publish(Q, envelopes(6, tag="N"))  # arrives while the prefetch is full
    for delivery in first[:3]:
        await backend.retry(delivery, at=time.time(), reason="peer busy")
    await backend.ack(first[3])
    seen = set()
    for _ in range(9):
        delivery = await taker.next(within=5.0)
        seen.add(delivery.envelope.message_id)
        await backend.ack(delivery)
    assert seen == {"M0", "M1", "M2", "N0", "N1", "N2", "N3", "N4", "N5"}
    await taker.none_within(0.3)
    await taker.close()


async def test_a_delivery_that_may_repeat_a_handled_one_says_so(backend: QueueBackend) -> None:
    """A broker flags redeliveries and republished envelopes, so a destination asks the
    store before sending again; backends that settle in the store's own transaction flag
    nothing (their store and queue cannot disagree)."""
    flags = isinstance(backend, RabbitQueue)
    await backend.declare(Q)
    await backend.publish(Q, envelopes(2))
    await backend.publish(Q, envelopes(1, tag="R"), republish=True)
    first = Taker(backend.consumer(Q, prefetch=10))
    taken = {}
    for _ in range(3):
        delivery = await first.next()
        taken[delivery.envelope.message_id] = delivery
    assert {m: d.redelivered for m, d in taken.items()} == {
        "M0": False, "M1": False, "R0": flags}
    await backend.ack(taken["M0"])
    await first.close()  # dies without settling M1 and R0
    second = Taker(backend.consumer(Q, prefetch=10))
    again = {}
    for _ in range(2):
        delivery = await second.next()
        again[delivery.envelope.message_id] = delivery.redelivered
        await backend.ack(delivery)
    assert again == {"M1": flags, "R0": flags}
    await second.none_within(0.3)
    await second.close()


async def test_forward_acks_one_and_publishes_its_successors(backend: QueueBackend) -> None:
    await backend.declare(CHANNEL)
    await backend.declare(Q)
    [incoming] = envelopes(1, "IN")
    await backend.publish(CHANNEL, [incoming])
    channel = Taker(backend.consumer(CHANNEL, prefetch=10))
    delivery = await channel.next()
    outputs = [Envelope("IN0", b'{"resourceType":"Patient"}', {}, "fhir+json"),
               Envelope("IN0", b"MSH|copy", {"n": "2"}, "hl7v2")]
    await backend.forward(delivery, [(Q, e) for e in outputs])
    await channel.none_within(0.3)
    assert await backend.depth(CHANNEL) == 0
    dest = Taker(backend.consumer(Q, prefetch=10))
    got = [await dest.next(), await dest.next()]
    assert sorted((d.envelope for d in got), key=lambda e: e.body) == sorted(
        outputs, key=lambda e: e.body)
    await channel.close()
    await dest.close()
