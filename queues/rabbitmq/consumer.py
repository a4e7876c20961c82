"""One consumer of one work queue: a channel with a prefetch, manual acks, and a local buffer.

Each message the broker pushes becomes a ``Delivery`` at once; ``get`` hands them out. Before
that, three things may happen to a message here rather than in a worker:

- it came back too early from a delay queue (delay queues have fixed tiers): if the rest of
  the wait is longer than the shortest tier it goes round a delay queue again, otherwise this
  consumer holds it until its time (ordered queues hand it out at once; the worker waits);
- it is a redelivery on a classic queue, which has no broker-side delivery limit: the count
  travels in a header, and past ``delivery_limit`` the message is dead-lettered;
- it was buffered here when the connection dropped: the broker has already put it back, so
  ``get`` skips it;
- it was not published by hisbridge and cannot be read as an envelope (no id, an unknown
  content type, malformed envelope headers; see ``codec.refusal``): it is dead-lettered
  with the reason, so the consumer goes on and an operator finds it among the dead letters.

The hot path talks to aiormq directly (aio-pika's message objects cost more than the rest of
a delivery), so this consumer re-subscribes itself when aio-pika reopens its channel after a
reconnection. Acks wait a few milliseconds for one another and go out together, as one
``multiple`` ack where they are contiguous.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import aiormq
from aio_pika.abc import AbstractRobustChannel
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from pamqp.commands import Basic

from queues.contract import Delivery, QueueUnavailable
from queues.rabbitmq.codec import History, decode_parts, encode, odd_history, refusal, refused
from queues.rabbitmq.topology import QueueTopology

if TYPE_CHECKING:
    from queues.rabbitmq.backend import RabbitQueue

log = logging.getLogger(__name__)

_GONE = (AMQPError, ConnectionError, OSError, ChannelInvalidStateError)

# Seconds an ack may wait for others to go out with it (see ``RabbitConsumer.queue_ack``).
ACK_DELAY = 0.005


class Inbound:
    """A delivery's link back to its AMQP message (``Delivery.backend_state``)."""

    __slots__ = ("channel", "consumer", "message_id", "settled", "tag")

    def __init__(self, consumer: RabbitConsumer, channel: aiormq.abc.AbstractChannel,
                 tag: int, message_id: str) -> None:
        self.consumer = consumer
        self.channel = channel
        self.tag = tag
        self.message_id = message_id
        self.settled = False

    def stale(self) -> bool:
        """The channel it came on has closed: the broker has already requeued it."""
        return self.channel.is_closed

    def drop(self) -> None:
        if not self.settled:
            self.settled = True
            self.consumer.inbound.discard(self)

    async def ack(self) -> None:
        if self.settled:
            return
        self.drop()
        if not self.stale():
            self.consumer.queue_ack(self)


class RabbitConsumer:
    """Hands out deliveries of one queue, at most ``prefetch`` unsettled at a time."""

    def __init__(self, backend: RabbitQueue, topology: QueueTopology, *, prefetch: int) -> None:
        self.backend = backend
        self.topology = topology
        self.queue = topology.logical
        self.prefetch = prefetch
        self.inbound: set[Inbound] = set()
        self._out: asyncio.Queue[Delivery] = asyncio.Queue()
        self._held: dict[Inbound, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._acks: list[Inbound] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        # Ack frames go out in the order their plans were made (see ``_send_acks``).
        self._ack_lock = asyncio.Lock()
        # Flush early before the unacked acks hold back much of the prefetch window.
        self._ack_batch = max(1, prefetch // 4)
        self._channel: AbstractRobustChannel | None = None
        self._raw: aiormq.abc.AbstractChannel | None = None
        self._tag = f"hisbridge-{uuid.uuid4().hex[:12]}"
        self._started = False
        self._start_lock = asyncio.Lock()
        self._closed = False

    @property
    def unsettled(self) -> int:
        return len(self.inbound)

    async def get(self) -> Delivery:
        if not self._started:
            await self._start()
        while True:
            delivery = await self._out.get()
            state = delivery.backend_state
            assert isinstance(state, Inbound)
            if state.settled:
                continue
            if state.stale():
                state.drop()
                continue
            return delivery

    async def _start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise RuntimeError("consumer closed")
            try:
                async with asyncio.timeout(self.backend.config.publish_timeout):
                    channel = await self.backend.subscriber.channel(publisher_confirms=False)
                    self._channel = channel
                    await channel.set_qos(prefetch_count=self.prefetch)
                    await self._subscribe()
            except (*_GONE, TimeoutError) as exc:
                raise QueueUnavailable(f"cannot consume {self.queue}: {exc}") from None
            channel.reopen_callbacks.add(self._on_reopen)
            self._started = True

    async def _subscribe(self) -> None:
        assert self._channel is not None
        raw = await self._channel.get_underlay_channel()
        topo = self.topology
        # Declared, not just named: after a broker restart that lost it, it comes back.
        await raw.queue_declare(topo.work, durable=True, arguments=topo.work_arguments())
        await raw.basic_consume(topo.work, self._on_message, consumer_tag=self._tag)
        raw.on_consumer_cancel_callbacks.add(self._on_cancelled)
        self._raw = raw

    async def _on_reopen(self, *_: object) -> None:
        """aio-pika reopened the channel after a reconnection: consume again."""
        if self._closed:
            return
        try:
            await self._subscribe()
        except Exception as exc:
            log.warning("%s: could not consume again after reconnecting (%s); retrying",
                        self.queue, exc)
            self._spawn(self._resubscribe_later())

    def _on_cancelled(self, frame: Any) -> None:
        """The broker cancelled the consumer (its queue was deleted): subscribe again."""
        if not self._closed and getattr(frame, "consumer_tag", None) == self._tag:
            log.warning("%s: the broker cancelled the consumer; subscribing again", self.queue)
            self._spawn(self._resubscribe_later())

    async def _resubscribe_later(self, delay: float = 2.0) -> None:
        await asyncio.sleep(delay)
        if self._closed:
            return
        if self._raw is not None and not self._raw.is_closed:
            with contextlib.suppress(*_GONE):
                await self._raw.basic_cancel(self._tag)
        await self._on_reopen()

    async def close(self) -> None:
        self._closed = True
        for handle in self._held.values():
            handle.cancel()
        self._held.clear()
        # Acks waiting to go out, acks on their way, copies being moved (whose acks are
        # queued when they finish): let them all out before the channel closes.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        self._flush_acks()
        while self._tasks:
            _, late = await asyncio.wait(set(self._tasks),
                                         timeout=max(0.0, deadline - loop.time()))
            self._flush_acks()
            if late:
                for task in late:
                    task.cancel()
                break
        if self._channel is not None:
            with contextlib.suppress(*_GONE, TimeoutError, asyncio.CancelledError):
                if self._raw is not None and not self._raw.is_closed and self.backend.available:
                    await asyncio.wait_for(self._raw.basic_cancel(self._tag), 5)
                # Closing the channel returns every unacked message to the queue.
                await asyncio.wait_for(self._channel.close(), 5)
        for inbound in list(self.inbound):
            inbound.drop()
        self.backend.forget_consumer(self.queue)

    # -- acks ------------------------------------------------------------------------------

    def queue_ack(self, inbound: Inbound) -> None:
        """Ack within ``ACK_DELAY`` seconds, together with whatever else settles by then.

        Waiting a little costs no one anything (the peer was answered long ago, the message
        is settled here) and turns one ack frame per message into one ``multiple`` ack for
        many, which is less work for this process and for the broker. A crash meanwhile
        only means those messages are delivered again (at-least-once).
        """
        self._acks.append(inbound)
        if len(self._acks) >= self._ack_batch:
            self._flush_acks()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY, self._flush_acks)

    def _flush_acks(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if not self._acks:
            return
        pending, self._acks = self._acks, []
        by_channel: dict[aiormq.abc.AbstractChannel, list[int]] = {}
        for inbound in pending:
            if not inbound.channel.is_closed:
                by_channel.setdefault(inbound.channel, []).append(inbound.tag)
        for channel, tags in by_channel.items():
            tags.sort()
            # ``multiple`` acks every tag up to the one named: only safe below the oldest
            # delivery of this channel still unsettled.
            oldest = min((i.tag for i in self.inbound if i.channel is channel), default=None)
            below = [t for t in tags if oldest is None or t < oldest]
            plan: list[tuple[int, bool]] = []
            if len(below) > 1:
                plan.append((below[-1], True))
                plan.extend((t, False) for t in tags[len(below):])
            else:
                plan.extend((t, False) for t in tags)
            self._spawn(_send_acks(channel, plan, self.queue, self._ack_lock))

    # -- arrival ---------------------------------------------------------------------------

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        if self._closed:
            return
        frame = message.delivery
        if not isinstance(frame, Basic.Deliver):
            return
        props = message.header.properties
        tag = int(frame.delivery_tag or 0)
        why = refusal(props.headers, props.message_id, props.content_type)
        if why is not None:
            # Counted as unsettled at once: a ``multiple`` ack must not pass over it.
            refusing = Inbound(self, message.channel, tag, "")
            self.inbound.add(refusing)
            self._spawn(self._refuse(message, refusing, why))
            return
        envelope, history = decode_parts(message.body, props.headers, props.message_id,
                                         props.content_type)
        odd = odd_history(props.headers)
        if odd:
            log.warning("%s: message %s: %s not as hisbridge writes them; read as unset",
                        self.queue, envelope.message_id, ", ".join(odd))
        inbound = Inbound(self, message.channel, tag, envelope.message_id)
        self.inbound.add(inbound)
        delivery = Delivery(
            queue=self.queue,
            tag=tag,
            envelope=envelope,
            failures=history.failures,
            first_failed_at=history.first_failed_at,
            not_before=history.not_before,
            last_error=history.last_error,
            redelivered=bool(frame.redelivered) or history.redeliveries > 0
            or history.republished,
            backend_state=inbound,
        )
        topo = self.topology
        if topo.counts_redeliveries and frame.redelivered:
            self._spawn(self._count_redelivery(delivery, history))
            return
        wait = history.not_before - time.time()
        if wait > 0 and not topo.ordered:
            route = topo.route_delay(wait) if wait > topo.hold_limit else None
            if route is not None:
                self._spawn(self._resend(delivery, route, history))
                return
            loop = asyncio.get_running_loop()
            self._held[inbound] = loop.call_later(wait, self._release, delivery, inbound)
            return
        self._out.put_nowait(delivery)

    def _release(self, delivery: Delivery, inbound: Inbound) -> None:
        self._held.pop(inbound, None)
        if not self._closed:
            self._out.put_nowait(delivery)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resend(self, delivery: Delivery, target: str, history: History,
                      priority: int | None = None) -> None:
        """Publish a copy (confirmed) and ack the original; on failure the broker redelivers."""
        inbound = delivery.backend_state
        assert isinstance(inbound, Inbound)
        try:
            await self.backend.send([("", target, encode(delivery.envelope, history,
                                                         priority=priority))])
        except Exception as exc:
            log.warning("%s: could not move message %s to %s (%s); it stays unacked",
                        self.queue, delivery.envelope.message_id, target, exc)
            return
        await inbound.ack()

    async def _refuse(self, message: aiormq.abc.DeliveredMessage, inbound: Inbound,
                      reason: str) -> None:
        """Dead-letter a message that is not an envelope (confirmed), then ack it."""
        log.warning("%s: a message not published by hisbridge was dead-lettered: %s",
                    self.queue, reason)
        copy = refused(message.body, message.header.properties, reason)
        topo = self.topology
        try:
            await self.backend.send([(topo.dead_exchange, topo.dead_routing_key, copy)])
        except Exception as exc:
            log.warning("%s: could not dead-letter a foreign message (%s); it stays unacked",
                        self.queue, exc)
            return
        await inbound.ack()

    async def _count_redelivery(self, delivery: Delivery, history: History) -> None:
        count = history.redeliveries + 1
        limit = self.topology.delivery_limit
        if count > limit:
            reason = (
                f"delivery limit reached: handed out {count} times without being settled "
                "(a consumer crashed or lost its connection)"
            )
            log.warning("%s: message %s dead-lettered: %s", self.queue,
                        delivery.envelope.message_id, reason)
            inbound = delivery.backend_state
            assert isinstance(inbound, Inbound)
            try:
                await self.backend.send([self.backend.dead_letter_publish(delivery, reason)])
            except Exception as exc:
                log.warning("%s: could not dead-letter message %s (%s)", self.queue,
                            delivery.envelope.message_id, exc)
                return
            await inbound.ack()
            return
        again = History(
            failures=history.failures, first_failed_at=history.first_failed_at,
            last_error=history.last_error, not_before=history.not_before, redeliveries=count,
            republished=history.republished,
        )
        # An ordered queue's head goes back to the head (priority 1), others to the tail.
        await self._resend(delivery, self.topology.work, again,
                           priority=1 if self.topology.ordered else None)


async def _send_acks(channel: aiormq.abc.AbstractChannel, plan: list[tuple[int, bool]],
                     queue: str, lock: asyncio.Lock) -> None:
    """Send one flush's acks, after every earlier flush's.

    A ``multiple`` ack covers the single acks of earlier flushes, so those must reach the
    broker first: one that came after would name a tag already acked, and the broker closes
    the channel for that (PRECONDITION_FAILED, unknown delivery tag), returning every
    unacked message. The frames pass through aiormq's bounded write queue, where a put that
    waits for room can be overtaken by a later one; the lock (first come, first served)
    keeps flushes from interleaving.
    """
    try:
        async with lock:
            for tag, multiple in plan:
                await channel.basic_ack(tag, multiple=multiple, wait=False)
    except _GONE as exc:
        # The broker requeued them with the channel; they will be delivered again.
        log.debug("%s: acks lost with their channel (%s)", queue, exc)
