"""Channel workers (filter, map, fan out) and destination workers (send, then settle).

Both kinds consume a queue through a ``WorkerPool`` and settle each delivery exactly once;
what happens to a failed delivery is decided by ``engine.outcome.decide`` and nowhere else.
With the embedded queue, the store's history and the queue change are one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from engine.contracts import Destination, Mapper, Payload, Result
from engine.database import Database
from engine.errors import MappingError, PermanentError, RejectedInput
from engine.filters import Filter, Subject
from engine.hl7 import parse
from engine.ingest import ChannelIngest, Prepared
from engine.logsetup import log_failure
from engine.mapping_pool import map_payload
from engine.message import Message, id_time
from engine.metrics import Metrics
from engine.outcome import Action, Outcome, decide, describe
from engine.retry import RetryPolicy
from engine.store import DEAD_LETTERED, FILTERED, MAPPED, RETRYING, SENT, MessageStore
from queues.contract import Consumer, Delivery, Envelope, QueueBackend
from queues.sqlite import SqliteQueue, Staging

log = logging.getLogger(__name__)

StoreOp = Callable[[sqlite3.Connection], None]


def destination_queue(channel: str, destination: str) -> str:
    return f"dest:{channel}/{destination}"


class WorkerPool:
    """``size`` tasks taking deliveries from one consumer and handling them.

    Stopping is graceful: idle tasks are cancelled at once, busy ones get ``grace`` seconds to
    finish their delivery; anything unsettled is delivered again after a restart.
    """

    def __init__(
        self, name: str, consumer: Consumer, handler: Callable[[Delivery], Awaitable[None]],
        size: int,
    ) -> None:
        self.name = name
        self.consumer = consumer
        self.handler = handler
        self.size = size
        self._tasks: list[asyncio.Task[None]] = []
        self._idle: set[asyncio.Task[None]] = set()
        self._stopping = False

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"{self.name}#{i}") for i in range(self.size)
        ]

    async def _run(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self._stopping:
            self._idle.add(task)
            try:
                delivery = await self.consumer.get()
            finally:
                self._idle.discard(task)
            if self._stopping:
                return
            try:
                await self.handler(delivery)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The handler settles its own deliveries; reaching here means settling failed
                # (the database is unwritable). The delivery stays unsettled and is delivered
                # again after a restart; pause so a broken store is not hammered.
                log_failure(log, exc, "%s: could not settle message %s", self.name,
                            delivery.envelope.message_id)
                await asyncio.sleep(1.0)

    async def stop(self, grace: float = 10.0) -> None:
        self._stopping = True
        for task in list(self._idle):
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.consumer.close()


@dataclass
class DestinationHealth:
    """ok: last attempt succeeded; retrying: recent failures; failing: many in a row."""

    failing_after: int = 5
    consecutive_failures: int = 0
    last_error: str = ""
    last_success_at: float | None = None
    last_failure_at: float | None = None

    def success(self) -> None:
        self.consecutive_failures = 0
        self.last_success_at = time.time()

    def failure(self, reason: str) -> None:
        self.consecutive_failures += 1
        self.last_error = reason
        self.last_failure_at = time.time()

    @property
    def state(self) -> str:
        if self.consecutive_failures == 0:
            return "ok"
        return "failing" if self.consecutive_failures >= self.failing_after else "retrying"


class Settler:
    """Applies a store change and a queue settlement together.

    With the embedded queue both happen in one transaction. Other backends get the store
    write first and the queue operation second, so a crash in between repeats a delivery
    (at-least-once) but never loses one.
    """

    def __init__(self, db: Database, backend: QueueBackend) -> None:
        self.db = db
        self.backend = backend
        self.shared = backend if isinstance(backend, SqliteQueue) else None

    async def settle(
        self, delivery: Delivery, outcome: Outcome, store_op: StoreOp,
        forward: Sequence[tuple[str, Envelope]] = (),
        reply: tuple[ChannelIngest, Prepared] | None = None,
    ) -> None:
        """Record, settle and (optionally) ingest the peer's answer into another channel."""
        if self.shared is not None:
            def op(s: Staging) -> None:
                store_op(s.conn)
                if reply is not None:
                    reply[0].stage(reply[1], s)
                if forward:
                    for queue, envelope in forward:
                        s.publish(queue, [envelope])
                if outcome.action is Action.ACK:
                    s.ack(delivery)
                elif outcome.action is Action.RETRY:
                    s.retry(delivery, at=outcome.retry_at, reason=outcome.reason)
                else:
                    s.dead_letter(delivery, reason=outcome.reason)

            await self.shared.transaction(op)
            if reply is not None:
                reply[0].counted(reply[1], None)
            return
        if reply is not None:
            # Not one transaction here: the answer is stored first, so a crash before the ack
            # repeats the delivery (its reply is then a recognised duplicate), never loses it.
            await reply[0](reply[1].message)
        await self.db.write(store_op)
        if forward:
            await self.backend.forward(delivery, forward)
        elif outcome.action is Action.ACK:
            await self.backend.ack(delivery)
        elif outcome.action is Action.RETRY:
            await self.backend.retry(delivery, at=outcome.retry_at, reason=outcome.reason)
        else:
            await self.backend.dead_letter(delivery, reason=outcome.reason)


@dataclass
class DestinationRuntime:
    """A destination as the pipeline sees it: adapter, queue, policy, filter and health."""

    channel: str
    name: str
    adapter: Destination
    policy: RetryPolicy
    ordered: bool
    concurrency: int
    filter: Filter | None = None
    mapper: Mapper | None = None
    respond: ChannelIngest | None = None
    health: DestinationHealth = field(default_factory=DestinationHealth)

    @property
    def queue(self) -> str:
        return destination_queue(self.channel, self.name)


class ChannelWorker:
    """Filters and maps a channel's messages and fans them out to its destinations."""

    def __init__(
        self, channel: str, *, db: Database, backend: QueueBackend, metrics: Metrics,
        mapper: Mapper | None, filter: Filter | None, destinations: list[DestinationRuntime],
        prefetch: int, workers: int = 4,
    ) -> None:
        self.channel = channel
        self.queue = f"channel:{channel}"
        self.backend = backend
        self.settler = Settler(db, backend)
        self.metrics = metrics
        self.mapper = mapper
        self.filter = filter
        self.destinations = destinations
        self.prefetch = prefetch
        self.workers = workers
        self.pool: WorkerPool | None = None

    def start(self) -> None:
        consumer = self.backend.consumer(self.queue, prefetch=self.prefetch)
        self.pool = WorkerPool(f"channel {self.channel}", consumer, self.process, self.workers)
        self.pool.start()

    async def stop(self, grace: float) -> None:
        if self.pool is not None:
            await self.pool.stop(grace)

    async def process(self, delivery: Delivery) -> None:
        env = delivery.envelope
        mid = env.message_id
        subject = Subject(env.body, env.content_type)
        if self.filter is not None and not self.filter.matches(subject):
            self.metrics.filtered.inc(channel=self.channel)
            await self.settler.settle(
                delivery, Outcome.ack(),
                lambda c: MessageStore.record(c, mid, FILTERED, detail="channel filter"),
            )
            return
        try:
            outputs = (
                await map_payload(self.mapper, Payload(env.body, env.content_type, env.headers))
                if self.mapper is not None else [Payload(env.body, env.content_type, env.headers)]
            )
        except Exception as exc:
            await self._mapping_failed(delivery, exc)
            return
        fanout: list[tuple[str, Envelope]] = []
        targets: list[str] = []
        for dest in self.destinations:
            if dest.filter is not None and not dest.filter.matches(subject):
                continue
            targets.append(dest.name)
            for out in outputs:
                fanout.append((dest.queue, Envelope(mid, out.body, out.headers, out.content_type)))
        mapped_body = _mapped_body(outputs) if self.mapper is not None else None
        mapped_type = outputs[0].content_type if outputs else None
        status = MAPPED if fanout else FILTERED
        detail = ("to " + ", ".join(targets)) if fanout else "no destination matched"

        def store_op(conn: sqlite3.Connection) -> None:
            if mapped_body is not None and mapped_type is not None:
                MessageStore.set_mapped(conn, mid, mapped_body, mapped_type)
            MessageStore.record(conn, mid, status, detail=detail)

        await self.settler.settle(delivery, Outcome.ack(), store_op, forward=fanout)
        if fanout:
            self.metrics.mapped.inc(channel=self.channel)
        else:
            self.metrics.filtered.inc(channel=self.channel)

    async def _mapping_failed(self, delivery: Delivery, exc: Exception) -> None:
        reason = describe(exc) if isinstance(exc, MappingError) else (
            f"mapping failed unexpectedly: {describe(exc)}"
        )
        if not isinstance(exc, MappingError):
            log_failure(log, exc, "channel %s: mapping crashed on message %s", self.channel,
                        delivery.envelope.message_id)
        mid = delivery.envelope.message_id
        self.metrics.mapping_errors.inc(channel=self.channel)
        log.warning("channel %s: message %s dead-lettered: mapping error", self.channel, mid)
        await self.settler.settle(
            delivery, Outcome(Action.DEAD_LETTER, reason),
            lambda c: MessageStore.record(c, mid, DEAD_LETTERED, detail=reason),
        )


def _nothing(conn: sqlite3.Connection) -> None:
    """A store change that changes nothing."""


def _mapped_body(outputs: list[Payload]) -> bytes:
    if len(outputs) == 1:
        return outputs[0].body
    return b"\n".join(o.body for o in outputs)


class DestinationWorker:
    """Sends one destination's deliveries and settles each with the decided outcome."""

    def __init__(
        self, dest: DestinationRuntime, *, db: Database, backend: QueueBackend, metrics: Metrics,
        store: MessageStore,
    ) -> None:
        self.dest = dest
        self.backend = backend
        self.settler = Settler(db, backend)
        self.metrics = metrics
        self.store = store
        self.pool: WorkerPool | None = None

    def start(self) -> None:
        size = 1 if self.dest.ordered else self.dest.concurrency
        consumer = self.backend.consumer(
            self.dest.queue, prefetch=max(size * 2, size), ordered=self.dest.ordered
        )
        self.pool = WorkerPool(
            f"destination {self.dest.channel}/{self.dest.name}", consumer, self.process, size
        )
        self.pool.start()

    async def stop(self, grace: float) -> None:
        if self.pool is not None:
            await self.pool.stop(grace)

    async def process(self, delivery: Delivery) -> None:
        dest = self.dest
        if delivery.redelivered and await self._already_sent(delivery):
            return
        wait = delivery.not_before - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        env = delivery.envelope
        started = time.perf_counter()
        error: BaseException | None = None
        result: Result | None = None
        try:
            for out in await self._prepare(env):
                result = await dest.adapter.send(out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc
        now = time.time()
        outcome = decide(
            error, failures_before=delivery.failures, first_failed_at=delivery.first_failed_at,
            now=now, policy=dest.policy,
        )
        labels = {"channel": dest.channel, "destination": dest.name}
        self.metrics.send_latency.observe(time.perf_counter() - started, **labels)
        attempt = delivery.failures + 1
        mid = env.message_id
        reply = None
        if outcome.action is Action.ACK:
            dest.health.success()
            status, detail = SENT, result.detail if result is not None else ""
            reply = self._reply(env, result)
        elif outcome.action is Action.RETRY:
            dest.health.failure(outcome.reason)
            status, detail = RETRYING, outcome.reason
        else:
            if not isinstance(error, PermanentError):
                dest.health.failure(outcome.reason)
            status, detail = DEAD_LETTERED, outcome.reason

        def store_op(conn: sqlite3.Connection) -> None:
            MessageStore.record(conn, mid, status, destination=dest.name,
                                attempt=attempt, detail=detail[:1000] or None, at=now)

        await self.settler.settle(delivery, outcome, store_op, reply=reply)
        if outcome.action is Action.ACK:
            self.metrics.sent.inc(**labels)
            self.metrics.delivery_latency.observe(max(0.0, now - id_time(mid)), **labels)
        elif outcome.action is Action.RETRY:
            self.metrics.retried.inc(**labels)
            log.info("%s/%s: message %s attempt %d failed (%s), retry in %.1fs",
                     dest.channel, dest.name, mid, attempt, type(error).__name__,
                     outcome.retry_at - now)
        else:
            self.metrics.dead_lettered.inc(**labels)
            log.warning("%s/%s: message %s dead-lettered after %d attempt(s) (%s)",
                        dest.channel, dest.name, mid, attempt, type(error).__name__)

    async def _already_sent(self, delivery: Delivery) -> bool:
        """Settle without sending a redelivery the destination already took.

        With a broker the store's ``sent`` event and the queue's ack are two steps; a crash
        between them, or an outbox republish of a row confirmed just before one, brings the
        message back. The store says whether the destination took it; only a message in
        flight at the crash (sent, not yet recorded) can still reach it twice.
        """
        dest, mid = self.dest, delivery.envelope.message_id
        if not await self.store.was_sent(mid, dest.name):
            return False
        await self.settler.settle(delivery, Outcome.ack(), _nothing)
        self.metrics.resends_skipped.inc(channel=dest.channel, destination=dest.name)
        log.debug("%s/%s: message %s was already sent; redelivery settled without sending",
                  dest.channel, dest.name, mid)
        return True

    def _reply(
        self, env: Envelope, result: Result | None
    ) -> tuple[ChannelIngest, Prepared] | None:
        """The peer's answer as a message for the ``response_to`` channel, if one is set."""
        target = self.dest.respond
        if target is None or result is None or not result.response:
            return None
        origin = f"{self.dest.channel}/{self.dest.name}"
        headers = {k: v for k, v in env.headers.items() if k != "Idempotency-Key"}
        headers.update({"in-reply-to": env.message_id, "from-destination": origin})
        content_type = result.content_type or "text"
        message = Message(
            channel=target.channel, content_type=content_type, body=result.response,
            headers=headers, correlation_id=env.message_id,
            # One answer per delivered message, even if the delivery is repeated after a crash.
            dedup_key=f"reply:{env.message_id}:{origin}",
        )
        hl7 = None
        if content_type == "hl7v2":
            with contextlib.suppress(RejectedInput):
                hl7 = parse(result.response)
        return target, target.prepare(message, hl7)

    async def _prepare(self, env: Envelope) -> list[Envelope]:
        """Apply the destination's own mapping, if any (a MappingError dead-letters)."""
        mapper = self.dest.mapper
        if mapper is None:
            return [env]
        outputs = await map_payload(mapper, Payload(env.body, env.content_type, env.headers))
        return [Envelope(env.message_id, o.body, o.headers, o.content_type) for o in outputs]


async def cancel_quietly(task: asyncio.Task[object] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
