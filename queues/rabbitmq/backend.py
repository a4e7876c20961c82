"""``RabbitQueue``: the queue contract on RabbitMQ, for several engines sharing one broker.

Two robust connections (aio-pika reconnects them and restores channels, queues and
consumers): one publishes, one consumes, as the broker's flow control blocks publishers
without stalling the acks that would relieve it. Every publish is ``mandatory`` with
publisher confirms: ``publish`` returns only once the broker has the message, a message the
broker cannot route (``basic.return``) or refuses (``basic.nack``, a full queue) raises, and
many publishes are in flight at once on one channel, bounded by ``confirm_window``.

Settling follows the contract's "publish first, ack second": a retry, a dead letter or a
forward is confirmed by the broker before the original delivery is acked, so a crash in
between repeats a message but never loses one. A delivery whose consumer channel has gone
(the connection dropped) was already returned to its queue by the broker; settling it does
nothing, and the broker hands it out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import (
    AMQPError,
    ChannelInvalidStateError,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)

from engine.errors import ConfigError
from engine.message import new_id
from queues.contract import Consumer, DeadLetter, Delivery, Envelope, QueueFull, QueueUnavailable
from queues.rabbitmq import deadletters
from queues.rabbitmq.codec import (
    DEAD_AT,
    DEAD_ID,
    DEAD_REASON,
    REASON_LIMIT,
    History,
    Outgoing,
    encode,
    to_ms,
)
from queues.rabbitmq.config import RabbitQueueConfig
from queues.rabbitmq.consumer import Inbound, RabbitConsumer
from queues.rabbitmq.topology import Mismatch, QueueTopology, describe_mismatch, parse_mismatch

log = logging.getLogger(__name__)

# (exchange, routing key, message): one publish.
Publish = tuple[str, str, Outgoing]

_BROKER_ERRORS = (AMQPError, ConnectionError, OSError, ChannelInvalidStateError)


class RabbitQueue:
    """QueueBackend on RabbitMQ (see the module docstring and docs/operations.md)."""

    shares_store = False

    def __init__(self, config: RabbitQueueConfig) -> None:
        self.config = config
        self._topologies: dict[str, QueueTopology] = {}
        self._consumers: dict[str, RabbitConsumer] = {}
        self._depths: dict[str, int] = {}
        self._window = asyncio.Semaphore(config.confirm_window)
        self._publisher: AbstractRobustConnection | None = None
        self._subscriber: AbstractRobustConnection | None = None
        self._pub: AbstractRobustChannel | None = None
        self._pub_raw: aiormq.Channel | None = None
        self._admin: AbstractRobustChannel | None = None
        self._closing = False
        self._was_lost = False
        self._refresher: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self._publisher = await self._connect("publish")
            self._subscriber = await self._connect("consume")
            self._pub = await self._publisher.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._admin = await self._publisher.channel(publisher_confirms=False)
        except (*_BROKER_ERRORS, TimeoutError) as exc:
            await self.close()
            raise QueueUnavailable(
                f"cannot connect to RabbitMQ at {self.config.display_url()}: {_describe(exc)}"
            ) from None
        log.info("connected to RabbitMQ at %s (prefix %s)", self.config.display_url(),
                 self.config.prefix)
        _quiet_reconnect_noise()
        self._refresher = asyncio.create_task(self._watch(), name="rabbitmq watch")

    async def _watch(self, every: float = 1.0, depths_every: float = 10.0,
                     remind_every: float = 30.0) -> None:
        """Report outages (their start comes from ``_on_lost``) and keep ``known_depths``
        current for the metrics gauges, which cannot await."""
        lost_at: float | None = None
        reminded = next_depths = 0.0
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            if not self.available:
                if lost_at is None:
                    lost_at = reminded = now
                elif now - reminded >= remind_every:
                    reminded = now
                    log.warning("RabbitMQ still unreachable after %.0fs; sources refuse "
                                "messages", now - lost_at)
                continue
            if lost_at is not None or self._was_lost:
                log.warning("RabbitMQ connection restored%s",
                            f" after {now - lost_at:.0f}s" if lost_at is not None else "")
                lost_at = None
                self._was_lost = False
            if now >= next_depths:
                next_depths = now + depths_every
                for queue in list(self._topologies):
                    await self.depth(queue)

    async def _connect(self, role: str) -> AbstractRobustConnection:
        connection = await aio_pika.connect_robust(
            str(self.config.url()),
            timeout=self.config.publish_timeout,
            reconnect_interval=self.config.reconnect_interval,
            client_properties={"connection_name": f"hisbridge {self.config.prefix} {role}"},
        )
        connection.close_callbacks.add(self._on_lost)
        return connection

    def _on_lost(self, _connection: Any, exc: BaseException | None = None) -> None:
        if not self._closing and not self._was_lost:
            self._was_lost = True
            log.warning("lost the RabbitMQ connection (%s); sources refuse messages until it "
                        "is back", _describe(exc) if exc else "closed")

    async def close(self) -> None:
        self._closing = True
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        for consumer in list(self._consumers.values()):
            await consumer.close()
        for connection in (self._subscriber, self._publisher):
            if connection is not None:
                with contextlib.suppress(*_BROKER_ERRORS, TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(connection.close(), 5)
        self._subscriber = self._publisher = None

    @property
    def available(self) -> bool:
        """Both connections are up (a robust connection clears this while reconnecting)."""
        return all(
            c is not None and c.connected.is_set() and not c.is_closed
            for c in (self._publisher, self._subscriber)
        ) and self._pub is not None and not self._pub.is_closed

    async def ping(self) -> None:
        if not self.available:
            raise QueueUnavailable(f"RabbitMQ at {self.config.display_url()} is not connected")

    # -- topology --------------------------------------------------------------------------

    async def declare(self, queue: str, *, ordered: bool = False) -> None:
        known = self._topologies.get(queue)
        if known is not None:
            if known.ordered != ordered:
                raise ConfigError(f"queue {queue} declared both ordered and unordered")
            return
        topo = QueueTopology(
            logical=queue, prefix=self.config.prefix, queue_type=self.config.queue_type,
            ordered=ordered, delivery_limit=self.config.delivery_limit,
            max_length=self.config.max_length or None, tiers=tuple(self.config.delay_tiers),
            dead_letter_strategy=self.config.dead_letter_strategy,
        )
        # A channel of its own: a refused declaration closes it, and must not take the
        # channel that ``depth`` and the other queues' declarations use down with it.
        temporary = await self.temporary_channel()
        try:
            async with asyncio.timeout(self.config.publish_timeout):
                channel = await temporary.get_underlay_channel()
                await channel.exchange_declare(
                    topo.dead_exchange, exchange_type="direct", durable=True
                )
                await channel.queue_declare(topo.dead, durable=True,
                                            arguments=topo.dead_arguments())
                await channel.queue_bind(topo.dead, topo.dead_exchange,
                                         routing_key=topo.dead_routing_key)
                for tier, name in topo.delay_queues:
                    await channel.queue_declare(name, durable=True,
                                                arguments=topo.delay_arguments(tier))
                await channel.queue_declare(topo.work, durable=True,
                                            arguments=topo.work_arguments())
        except ChannelPreconditionFailed as exc:
            raise ConfigError(await self._refusal(queue, topo, str(exc))) from None
        except (*_BROKER_ERRORS, TimeoutError) as exc:
            raise QueueUnavailable(f"cannot declare {queue}: {_describe(exc)}") from None
        finally:
            await deadletters.close_channel(temporary)
        self._topologies[queue] = topo
        self._depths.setdefault(queue, 0)

    async def _refusal(self, queue: str, topo: QueueTopology, broker_text: str) -> str:
        """The broker refused a declaration: say which object differs, and how.

        The broker names only the first argument it compares, and it compares the
        dead-letter exchange before the queue type: a queue declared by hand as classic
        (no arguments) is reported as "no dead-letter exchange". The type is the difference
        that matters there, so it is asked about on its own.
        """
        mismatch = parse_mismatch(broker_text)
        if (mismatch is not None and mismatch.kind == "queue"
                and mismatch.argument != "x-queue-type"):
            wanted = topo.type_of(mismatch.name)
            if wanted is not None:
                mismatch = await self._type_mismatch(mismatch.name, wanted) or mismatch
        return describe_mismatch(queue, mismatch, broker_text)

    async def _type_mismatch(self, name: str, wanted: str) -> Mismatch | None:
        with contextlib.suppress(QueueUnavailable):
            channel = await self.temporary_channel()
            try:
                async with asyncio.timeout(self.config.publish_timeout):
                    raw = await channel.get_underlay_channel()
                    await raw.queue_declare(name, durable=True,
                                            arguments={"x-queue-type": wanted})
            except ChannelPreconditionFailed as exc:
                found = parse_mismatch(str(exc))
                if found is not None and found.argument == "x-queue-type":
                    return found
            except (*_BROKER_ERRORS, TimeoutError):
                pass
            finally:
                await deadletters.close_channel(channel)
        return None

    def topology(self, queue: str) -> QueueTopology:
        try:
            return self._topologies[queue]
        except KeyError:
            raise QueueUnavailable(f"queue {queue} was not declared") from None

    async def _admin_channel(self) -> aiormq.abc.AbstractChannel:
        if self._admin is None:
            raise QueueUnavailable("the RabbitMQ backend is not started")
        if not self.available:  # a robust channel would wait for the reconnection
            raise QueueUnavailable(f"RabbitMQ at {self.config.display_url()} is not connected")
        try:
            async with asyncio.timeout(self.config.publish_timeout):
                return await self._admin.get_underlay_channel()
        except (*_BROKER_ERRORS, TimeoutError) as exc:
            raise QueueUnavailable(f"RabbitMQ is not reachable: {_describe(exc)}") from None

    # -- publishing ------------------------------------------------------------------------

    async def send(self, publishes: Sequence[Publish]) -> None:
        """Publish all, concurrently, and return once the broker confirmed every one.

        Raises:
            QueueUnavailable: not connected, a confirm timed out, or the broker returned a
                message it could not route (its queue is missing).
            QueueFull: the broker refused a message (``basic.nack``: the queue is full).
        """
        if not self.available:
            raise QueueUnavailable(f"RabbitMQ at {self.config.display_url()} is not connected")
        if len(publishes) == 1:
            await self._send_one(*publishes[0])
            return
        results = await asyncio.gather(
            *(self._send_one(*p) for p in publishes), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _publisher_channel(self) -> aiormq.Channel:
        """The publishing channel's aiormq channel (a new one after each reconnection)."""
        raw = self._pub_raw
        if raw is None or raw.is_closed:
            assert self._pub is not None
            async with asyncio.timeout(self.config.publish_timeout):
                underlay = await self._pub.get_underlay_channel()
            assert isinstance(underlay, aiormq.Channel)
            raw = self._pub_raw = underlay
        return raw

    async def _send_one(self, exchange: str, routing_key: str, message: Outgoing) -> None:
        try:
            async with self._window:
                channel = await self._publisher_channel()
                # aiormq directly: the hot path skips aio-pika's message objects. No
                # ``wait`` for the socket write: the confirm that follows implies it, and
                # the window above bounds what may be buffered.
                await channel.basic_publish(
                    message.body, exchange=exchange, routing_key=routing_key,
                    properties=message.properties, mandatory=True,
                    timeout=self.config.publish_timeout, wait=False,
                )
        except PublishError:
            raise QueueUnavailable(
                f"RabbitMQ could not route a message to {routing_key!r} (queue missing?)"
            ) from None
        except DeliveryError:
            raise QueueFull(f"RabbitMQ refused a message for {routing_key!r} (queue full)"
                            ) from None
        except TimeoutError:
            raise QueueUnavailable(
                f"RabbitMQ did not confirm within {self.config.publish_timeout:g}s"
            ) from None
        except _BROKER_ERRORS as exc:
            raise QueueUnavailable(f"publishing to RabbitMQ failed: {_describe(exc)}") from None

    async def publish(self, queue: str, envelopes: Sequence[Envelope], *, delay: float = 0.0,
                      republish: bool = False) -> None:
        topo = self.topology(queue)
        history = History(republished=True) if republish else None
        target = topo.work
        if delay > 0:
            history = History(not_before=time.time() + delay, republished=republish)
            target = topo.route_delay(delay) or topo.work
        await self.send([("", target, encode(e, history)) for e in envelopes])

    # -- consuming and settling ------------------------------------------------------------

    def consumer(self, queue: str, *, prefetch: int = 100, ordered: bool = False) -> Consumer:
        topo = self.topology(queue)
        if ordered != topo.ordered:
            raise ConfigError(
                f"queue {queue} was declared {'ordered' if topo.ordered else 'unordered'}; "
                f"declare it with ordered={ordered} to consume it that way"
            )
        if queue in self._consumers:
            raise RuntimeError(f"queue {queue} already has a consumer in this process")
        size = 1 if ordered else max(prefetch, self.config.min_prefetch)
        consumer = RabbitConsumer(self, topo, prefetch=size)
        self._consumers[queue] = consumer
        return consumer

    def forget_consumer(self, queue: str) -> None:
        self._consumers.pop(queue, None)

    async def ack(self, delivery: Delivery) -> None:
        await _inbound(delivery).ack()

    async def retry(self, delivery: Delivery, *, at: float, reason: str) -> None:
        inbound = _inbound(delivery)
        if inbound.stale():
            inbound.drop()
            return
        now = time.time()
        history = History(
            failures=delivery.failures + 1,
            first_failed_at=delivery.first_failed_at if delivery.first_failed_at else now,
            last_error=reason,
            not_before=at,
        )
        topo = self.topology(delivery.queue)
        if topo.ordered:
            # Priority 1 puts it ahead of everything waiting: the head of the queue stays put.
            publish = ("", topo.work, encode(delivery.envelope, history, priority=1))
        else:
            target = topo.route_delay(at - now) or topo.work
            publish = ("", target, encode(delivery.envelope, history))
        await self.send([publish])
        await inbound.ack()

    async def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        inbound = _inbound(delivery)
        if inbound.stale():
            inbound.drop()
            return
        await self.send([self.dead_letter_publish(delivery, reason)])
        await inbound.ack()

    def dead_letter_publish(self, delivery: Delivery, reason: str) -> Publish:
        now = time.time()
        topo = self.topology(delivery.queue)
        history = History(
            failures=delivery.failures + 1,
            first_failed_at=delivery.first_failed_at if delivery.first_failed_at else now,
            last_error=reason,
        )
        extra = {DEAD_REASON: reason[:REASON_LIMIT], DEAD_AT: to_ms(now), DEAD_ID: new_id()}
        message = encode(delivery.envelope, history, extra=extra)
        return (topo.dead_exchange, topo.dead_routing_key, message)

    async def forward(self, delivery: Delivery, outputs: Sequence[tuple[str, Envelope]]) -> None:
        inbound = _inbound(delivery)
        if inbound.stale():
            inbound.drop()
            return
        await self.send([("", self.topology(q).work, encode(e)) for q, e in outputs])
        await inbound.ack()

    # -- inspection ------------------------------------------------------------------------

    async def depth(self, queue: str) -> int:
        """Ready in the work queue + waiting in its delay queues + unsettled here.

        Messages handed to consumers in other processes are not counted (the broker tells
        ready counts only). When the broker is unreachable the last known value is returned.
        """
        topo = self._topologies.get(queue)
        if topo is None:
            return 0
        try:
            channel = await self._admin_channel()
            total = 0
            async with asyncio.timeout(self.config.publish_timeout):
                for name in (topo.work, *(n for _, n in topo.delay_queues)):
                    ok = await channel.queue_declare(name, passive=True)
                    total += ok.message_count or 0
        except (QueueUnavailable, *_BROKER_ERRORS, TimeoutError) as exc:
            log.debug("depth of %s unknown: %s", queue, _describe(exc))
            return self._depths.get(queue, 0)
        consumer = self._consumers.get(queue)
        if consumer is not None:
            total += consumer.unsettled
        self._depths[queue] = total
        return total

    def known_depths(self) -> dict[str, int]:
        """The depth of every declared queue as last measured (for metrics gauges)."""
        return dict(self._depths)

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        return await deadletters.list_dead(self, self.topology(queue), limit=limit)

    async def requeue(self, queue: str, ids: Sequence[str] | None = None) -> int:
        return await deadletters.requeue(self, self.topology(queue), ids)

    async def temporary_channel(self) -> AbstractRobustChannel:
        """A channel of its own for browsing a queue (closing it returns what it took)."""
        if self._publisher is None or not self.available:
            raise QueueUnavailable(f"RabbitMQ at {self.config.display_url()} is not connected")
        try:
            async with asyncio.timeout(self.config.publish_timeout):
                return await self._publisher.channel(publisher_confirms=False)
        except (*_BROKER_ERRORS, TimeoutError) as exc:
            raise QueueUnavailable(f"RabbitMQ is not reachable: {_describe(exc)}") from None

    @property
    def subscriber(self) -> AbstractRobustConnection:
        if self._subscriber is None:
            raise QueueUnavailable("the RabbitMQ backend is not started")
        return self._subscriber


class _ReconnectNoise(logging.Filter):
    """aio-pika and aiormq log every failed reconnection attempt, tracebacks included, as
    warnings and errors. The backend reports an outage itself (when it starts, every 30 s
    while it lasts, when it ends), so theirs are kept for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL or log.isEnabledFor(logging.DEBUG)


_NOISY = ("aiormq.connection", "aio_pika.robust_connection", "aio_pika.tools")


def _quiet_reconnect_noise() -> None:
    for name in _NOISY:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ReconnectNoise) for f in logger.filters):
            logger.addFilter(_ReconnectNoise())


def _inbound(delivery: Delivery) -> Inbound:
    state = delivery.backend_state
    if not isinstance(state, Inbound):
        raise TypeError("not a delivery from the RabbitMQ backend")
    return state


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
