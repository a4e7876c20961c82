"""Ingest: dedup, store the raw message, enqueue it for its channel, and only then return.

The source answers its peer from what ingest returns: a positive answer only after this
function returns, a negative one (AE / 503) when it raises TransientError. With the embedded
queue, storing and enqueueing are one transaction.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass

from engine.contracts import IngestResult
from engine.database import Database, StoreUnavailable
from engine.errors import TransientError
from engine.filters import Filter, Getter, Subject, compile_path
from engine.hl7 import Hl7Message
from engine.message import Message
from engine.metrics import Metrics
from engine.store import FILTERED, QUEUED, MessageStore
from queues.contract import Envelope, QueueBackend, QueueFull, QueueUnavailable
from queues.sqlite import SqliteQueue, Staging

log = logging.getLogger(__name__)

DEFAULT_HL7_DEDUP = ("MSH-4", "MSH-10")
DEFAULT_HEADER_DEDUP = ("header:Idempotency-Key",)


def channel_queue(channel: str) -> str:
    return f"channel:{channel}"


class DedupKey:
    """Builds a message's dedup key from configured fields (None when all are empty)."""

    def __init__(self, fields: list[str] | None) -> None:
        self.explicit = fields is not None
        self.hl7 = self._compile(list(fields) if fields is not None else list(DEFAULT_HL7_DEDUP))
        self.other = self._compile(
            list(fields) if fields is not None else list(DEFAULT_HEADER_DEDUP)
        )

    @staticmethod
    def _compile(fields: list[str]) -> list[tuple[str, Getter | None]]:
        return [
            (f.removeprefix("header:"), None) if f.startswith("header:") else (f, compile_path(f))
            for f in fields
        ]

    def __call__(self, message: Message, hl7: Hl7Message | None) -> str | None:
        parts = self.hl7 if message.content_type == "hl7v2" else self.other
        if not parts:
            return None
        subject = Subject(message.body, message.content_type, hl7)
        values = [
            message.headers.get(name, "") if getter is None else (getter(subject) or "")
            for name, getter in parts
        ]
        if not any(values):
            return None
        return "|".join(values)


@dataclass(frozen=True, slots=True)
class Fanout:
    """A destination queue that ingest may feed directly, with its filter."""

    queue: str
    name: str
    filter: Filter | None = None


class ChannelIngest:
    """The ingest callable handed to one channel's source."""

    def __init__(
        self,
        channel: str,
        *,
        dedup: list[str] | None,
        db: Database,
        store: MessageStore,
        backend: QueueBackend,
        metrics: Metrics,
        fanout: list[Fanout] | None = None,
    ) -> None:
        self.channel = channel
        self.queue = channel_queue(channel)
        self.dedup_key = DedupKey(dedup)
        self.db = db
        self.store = store
        self.backend = backend
        self.metrics = metrics
        # A channel with neither filter nor mapping has nothing for its channel worker to do:
        # with the embedded queue, ingest then queues for the destinations directly (in the
        # same transaction), which saves a stage, a commit and a queue row per message.
        self.fanout = fanout if isinstance(backend, SqliteQueue) else None

    async def __call__(self, message: Message, *, hl7: Hl7Message | None = None) -> IngestResult:
        started = time.perf_counter()
        key = self.dedup_key(message, hl7)
        if key is not None:
            message = dataclasses.replace(message, dedup_key=key)
        mtype = hl7.message_type.replace(hl7.component_sep, "^") if hl7 else None
        control = hl7.control_id if hl7 else None
        envelope = Envelope(message.id, message.body, message.headers, message.content_type)
        try:
            duplicate_of = await self._store_and_enqueue(message, envelope, mtype, control, hl7)
        except (QueueFull, QueueUnavailable, StoreUnavailable) as exc:
            self.metrics.refused.inc(channel=self.channel)
            log.warning("channel %s refused message %s: %s", self.channel, control or message.id,
                        exc)
            raise TransientError(f"cannot accept the message now: {exc}", retry_after=5) from None
        self.metrics.ingest_latency.observe(time.perf_counter() - started, channel=self.channel)
        if duplicate_of is not None:
            self.metrics.duplicates.inc(channel=self.channel)
            log.debug("channel %s: duplicate %s of %s", self.channel, control, duplicate_of)
            return IngestResult(duplicate_of, duplicate=True)
        self.metrics.received.inc(channel=self.channel)
        return IngestResult(message.id, duplicate=False)

    async def _store_and_enqueue(
        self, message: Message, envelope: Envelope, mtype: str | None, control: str | None,
        hl7: Hl7Message | None,
    ) -> str | None:
        backend = self.backend
        if isinstance(backend, SqliteQueue):
            backend.check_capacity(1)

            if self.fanout is not None:
                subject = Subject(message.body, message.content_type, hl7)
                targets = [f for f in self.fanout if f.filter is None or f.filter.matches(subject)]
                return await backend.transaction(
                    functools.partial(self._fan_out, message, envelope, mtype, control, targets)
                )

            def op(s: Staging) -> str | None:
                dup = MessageStore.insert(s.conn, message, message_type=mtype, control_id=control)
                if dup is None:
                    s.publish(self.queue, [envelope])
                return dup

            return await backend.transaction(op)
        # Other backends: the outbox keeps "stored" and "enqueued" together (engine.outbox).
        from engine.outbox import store_and_publish

        return await store_and_publish(
            self.db, backend, message, self.queue, envelope, message_type=mtype,
            control_id=control,
        )

    @staticmethod
    def _fan_out(
        message: Message, envelope: Envelope, mtype: str | None, control: str | None,
        targets: list[Fanout], s: Staging,
    ) -> str | None:
        """Store the message and queue it for its destinations (runs in the writer)."""
        names = ", ".join(f.name for f in targets)
        dup = MessageStore.insert(
            s.conn, message, message_type=mtype, control_id=control,
            status=QUEUED if targets else FILTERED,
            detail=f"queued for {names}" if targets else "no destination matched",
        )
        if dup is None:
            for target in targets:
                s.publish(target.queue, [envelope])
        return dup
