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
from collections.abc import Sequence
from dataclasses import dataclass

from engine.contracts import IngestResult
from engine.database import Database, StoreUnavailable
from engine.errors import KeyReused, TransientError
from engine.filters import Filter, Getter, Subject, compile_path
from engine.hl7 import Hl7Message, same_content
from engine.message import Message
from engine.metrics import Metrics
from engine.outbox import Stored, outbox_for
from engine.store import FILTERED, QUEUED, KeyPolicy, MessageStore
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


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message ready to be stored: dedup key set, envelope built, targets chosen."""

    message: Message
    envelope: Envelope
    message_type: str | None
    control: str | None
    targets: list[tuple[str, str]] | None  # (queue, destination) when fanning out directly
    keys: KeyPolicy | None = None  # how the dedup key is held


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
        dedup_window: float = 7 * 86_400,
    ) -> None:
        self.channel = channel
        # Keys a source sets (idempotency keys) are the truth; keys made from HL7 fields are
        # only as unique as the sender's counter, so a resend is told from a reused key.
        self._given_keys = KeyPolicy(window=dedup_window)
        self._counter_keys = KeyPolicy(window=dedup_window, same_content=same_content)
        self.queue = channel_queue(channel)
        self.dedup_key = DedupKey(dedup)
        self.db = db
        self.store = store
        self.backend = backend
        self.metrics = metrics
        # A channel with neither filter nor mapping has nothing for its channel worker to do:
        # ingest then queues for the destinations directly (with the embedded queue in the
        # same transaction, with a broker through the outbox), which saves a stage, a commit
        # and a queue round trip per message.
        self.fanout = fanout

    async def __call__(self, message: Message, *, hl7: Hl7Message | None = None) -> IngestResult:
        started = time.perf_counter()
        prepared = self.prepare(message, hl7)
        try:
            duplicate_of = await self._store_and_enqueue(prepared)
        except KeyReused:
            self._key_reused(prepared)
            raise
        except (QueueFull, QueueUnavailable, StoreUnavailable) as exc:
            self.metrics.refused.inc(channel=self.channel)
            log.warning("channel %s refused message %s: %s", self.channel,
                        prepared.control or message.id, exc)
            raise TransientError(f"cannot accept the message now: {exc}", retry_after=5) from None
        self.metrics.ingest_latency.observe(time.perf_counter() - started, channel=self.channel)
        return self.counted(prepared, duplicate_of)

    async def many(
        self, items: Sequence[tuple[Message, Hl7Message | None]]
    ) -> list[IngestResult]:
        """Ingest a batch in order, stored in one transaction (all or none). With a broker
        the messages are then published together; a publish that fails leaves its message
        in the outbox, recognised as a duplicate when the batch is sent again."""
        started = time.perf_counter()
        prepared = [self.prepare(message, hl7) for message, hl7 in items]
        backend = self.backend
        try:
            _reused_within(prepared)
            if isinstance(backend, SqliteQueue):
                backend.check_capacity(len(prepared))
                duplicates = await backend.transaction(
                    lambda s: [self.stage(p, s) for p in prepared])
            else:
                duplicates = await outbox_for(self.db, backend).store_and_publish_many(
                    [self._stored(p) for p in prepared])
        except KeyReused as exc:
            self._key_reused(next((p for p in prepared if p.message.dedup_key == exc.key),
                                  prepared[0]))
            raise
        except (QueueFull, QueueUnavailable, StoreUnavailable) as exc:
            self.metrics.refused.inc(len(prepared), channel=self.channel)
            log.warning("channel %s refused a batch of %d messages: %s", self.channel,
                        len(prepared), exc)
            raise TransientError(f"cannot accept the batch now: {exc}", retry_after=5) from None
        self.metrics.ingest_latency.observe(time.perf_counter() - started, channel=self.channel)
        return [self.counted(p, dup) for p, dup in zip(prepared, duplicates, strict=True)]

    def _key_reused(self, prepared: Prepared) -> None:
        self.metrics.key_reused.inc(channel=self.channel)
        log.warning("channel %s refused message %s: its dedup key belongs to an earlier, "
                    "different message (a reused control id)", self.channel,
                    prepared.control or prepared.message.id)

    def prepare(self, message: Message, hl7: Hl7Message | None = None) -> Prepared:
        """Everything ingest decides before the transaction (runs on the event loop)."""
        key = self.dedup_key(message, hl7) if message.dedup_key is None else message.dedup_key
        keys = self._given_keys
        if key is not None and key != message.dedup_key:
            message = dataclasses.replace(message, dedup_key=key)
            if hl7 is not None:
                keys = self._counter_keys
        targets: list[tuple[str, str]] | None = None
        if self.fanout is not None:
            subject = Subject(message.body, message.content_type, hl7)
            targets = [(f.queue, f.name) for f in self.fanout
                       if f.filter is None or f.filter.matches(subject)]
        return Prepared(
            message=message,
            envelope=Envelope(message.id, message.body, message.headers, message.content_type),
            message_type=hl7.message_type.replace(hl7.component_sep, "^") if hl7 else None,
            control=hl7.control_id if hl7 else None,
            targets=targets,
            keys=keys,
        )

    def stage(self, prepared: Prepared, s: Staging) -> str | None:
        """Store and enqueue inside an embedded-queue transaction (runs in the writer).

        Returns the id of an earlier message with the same dedup key, or None when new.
        """
        message = prepared.message
        if prepared.targets is None:
            dup = MessageStore.insert(s.conn, message, message_type=prepared.message_type,
                                      control_id=prepared.control,
                                      keys=prepared.keys)
            if dup is None:
                s.publish(self.queue, [prepared.envelope])
            return dup
        names = ", ".join(name for _, name in prepared.targets)
        dup = MessageStore.insert(
            s.conn, message, message_type=prepared.message_type, control_id=prepared.control,
            status=QUEUED if prepared.targets else FILTERED,
            detail=f"queued for {names}" if prepared.targets else "no destination matched",
            keys=prepared.keys,
        )
        if dup is None:
            for queue, _ in prepared.targets:
                s.publish(queue, [prepared.envelope])
        return dup

    def counted(self, prepared: Prepared, duplicate_of: str | None) -> IngestResult:
        """Count the outcome of a committed ingest and say what happened."""
        if duplicate_of is not None:
            self.metrics.duplicates.inc(channel=self.channel)
            log.debug("channel %s: duplicate %s of %s", self.channel, prepared.control,
                      duplicate_of)
            return IngestResult(duplicate_of, duplicate=True)
        self.metrics.received.inc(channel=self.channel)
        return IngestResult(prepared.message.id, duplicate=False)

    async def _store_and_enqueue(self, prepared: Prepared) -> str | None:
        backend = self.backend
        if isinstance(backend, SqliteQueue):
            backend.check_capacity(1)
            return await backend.transaction(functools.partial(self.stage, prepared))
        # Other backends: the outbox keeps "stored" and "enqueued" together (engine.outbox).
        [duplicate_of] = await outbox_for(self.db, backend).store_and_publish_many(
            [self._stored(prepared)])
        return duplicate_of

    def _stored(self, prepared: Prepared) -> Stored:
        """What the outbox stores for ``prepared`` and the queues it publishes it to."""
        if prepared.targets is None:
            return Stored(prepared.message, [self.queue], prepared.envelope,
                          prepared.message_type, prepared.control, keys=prepared.keys)
        names = ", ".join(name for _, name in prepared.targets)
        return Stored(
            prepared.message, [q for q, _ in prepared.targets], prepared.envelope,
            prepared.message_type, prepared.control,
            status=QUEUED if prepared.targets else FILTERED,
            detail=f"queued for {names}" if prepared.targets else "no destination matched",
            keys=prepared.keys,
        )

def _reused_within(prepared: list[Prepared]) -> None:
    """Raise KeyReused when two messages of one batch share a key but not their content.

    The batch's transaction would refuse the second one too, but its reason would name the
    first as "a different message" by an id the rollback then removes; found here, the
    reason says what happened.
    """
    first: dict[str, Prepared] = {}
    for p in prepared:
        key, check = p.message.dedup_key, p.keys.same_content if p.keys else None
        if key is None or check is None:
            continue
        earlier = first.setdefault(key, p)
        if earlier is not p and not (earlier.message_type == p.message_type
                                     and check(earlier.message.body, p.message.body)):
            raise KeyReused(f"key {key} is used by two different messages of this batch",
                            key=key, earlier_id=earlier.message.id)
