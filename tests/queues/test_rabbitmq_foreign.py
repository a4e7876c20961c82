"""Messages hisbridge did not publish, and queues it did not declare, on a real broker.

Someone (a script, another application, an operator with the management UI) publishes into
a hisbridge queue, or declares one by hand before the engine starts. The consumer must hand
out the next genuine message after a foreign one, and the foreign one must end where an
operator sees it: dead-lettered with a reason naming what was wrong, or delivered with
safe defaults where that is harmless (see ``queues.rabbitmq.codec.inspect``).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from engine.errors import ConfigError
from queues.contract import Envelope
from queues.rabbitmq.backend import RabbitQueue
from tests.queues.queue_support import Broker, Taker, delete_topology

pytestmark = pytest.mark.rabbitmq

Q = "dest:his/foreign"
Q2 = "dest:his/other"


@pytest.fixture
async def backends(broker: Broker, prefix: str) -> AsyncIterator[Callable[..., Any]]:
    started: list[RabbitQueue] = []

    async def make(**overrides: Any) -> RabbitQueue:
        backend = broker.config(prefix, delay_tiers=[0.2, 5.0], **overrides).build()
        await backend.start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await backend.close()
    await delete_topology(broker, prefix, [Q, Q2])


# aiormq gives every publish a message_id; other clients need not. These placeholders are
# replaced just before the header goes on the wire.
NO_ID = "placeholder-no-message-id"
EMPTY_ID = "placeholder-empty-message-id"


_marshal = ContentHeader.marshal


def _marshal_foreign(self: ContentHeader) -> bytes:
    if self.properties.message_id == NO_ID:
        self.properties.message_id = None
    elif self.properties.message_id == EMPTY_ID:
        self.properties.message_id = ""
    return _marshal(self)


@pytest.fixture(autouse=True)
def _foreign_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ContentHeader, "marshal", _marshal_foreign)


class Outsider:
    """Publishes raw AMQP messages, properties exactly as given, as another program would."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.connection: aio_pika.abc.AbstractConnection | None = None

    async def __aenter__(self) -> Outsider:
        self.connection = await aio_pika.connect(self.broker.url())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.connection is not None
        await self.connection.close()

    async def publish(self, queue: str, body: bytes, **properties: Any) -> None:
        assert self.connection is not None
        channel = await self.connection.channel()
        raw = await channel.get_underlay_channel()
        properties.setdefault("delivery_mode", 2)
        properties.setdefault("message_id", NO_ID)
        await raw.basic_publish(body, routing_key=queue,
                                properties=Basic.Properties(**properties), mandatory=True)
        await channel.close()

    async def declare(self, queue: str, arguments: dict[str, Any]) -> None:
        assert self.connection is not None
        channel = await self.connection.channel()
        await channel.declare_queue(queue, durable=True, arguments=arguments)
        await channel.close()


class NotUtf8(str):
    """A header string sent as Latin-1 bytes, as a client that does not encode would."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return str.encode(self, "latin-1", errors)


def genuine(name: str) -> Envelope:
    return Envelope(name, b"MSH|^~\\&|genuine", {"k": "v"}, "hl7v2")


ENVELOPE = {"message_id": "F1", "content_type": "hl7v2"}

# Refused: what the message *is* (id, format, envelope headers) is missing or malformed, so
# delivering it would mean guessing. (body label, properties, reason pattern)
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("no-id", {"content_type": "hl7v2"}, r"no message_id"),
    ("empty-id", {"message_id": EMPTY_ID, "content_type": "hl7v2"}, r"no message_id"),
    ("no-type", {"message_id": "F1"}, r"no content_type"),
    ("odd-type", {"message_id": "F1", "content_type": "application/octet-stream"},
     r"content_type 'application/octet-stream' is not one of hl7v2, fhir\+json"),
    ("list-headers", {**ENVELOPE, "headers": {"hb-headers": ["a", "b"]}},
     r"hb-headers is a list, not a table"),
    ("int-header", {**ENVELOPE, "headers": {"hb-headers": {"a": "x", "n": 5}}},
     r"hb-headers\['n'\] is a int, not a string"),
    ("table-header", {**ENVELOPE, "headers": {"hb-headers": {"t": {"x": 1}}}},
     r"hb-headers\['t'\] is a dict, not a string"),
    ("latin1-header", {**ENVELOPE, "headers": {"hb-headers": {"name": NotUtf8("Zoë")}}},
     r"hb-headers\['name'\] is not UTF-8"),
    ("bytes-header", {**ENVELOPE, "headers": {"hb-headers": {"raw": bytearray(b"\x00\xff")}}},
     r"hb-headers\['raw'\] is not UTF-8"),
    ("huge-headers", {**ENVELOPE,
                      "headers": {"hb-headers": {f"h{i}": "v" * 60 for i in range(1500)}}},
     r"hb-headers too large: 1500 entries"),
]

# Delivered: only attempt bookkeeping is odd; defaults cost at most a bounded round of
# retries more. (body label, properties, expected failures, expected first_failed_at)
DELIVERED: list[tuple[str, dict[str, Any], int, float | None]] = [
    ("failures-str", {**ENVELOPE, "headers": {"x-hb-failures": "3"}}, 0, None),
    ("failures-float", {**ENVELOPE, "headers": {"x-hb-failures": 2.0}}, 2, None),
    # (NaN and infinity never arrive: the broker closes the publisher's connection.)
    ("failures-fraction", {**ENVELOPE, "headers": {"x-hb-failures": 2.5}}, 0, None),
    ("failures-bool", {**ENVELOPE, "headers": {"x-hb-failures": True}}, 0, None),
    ("failures-negative", {**ENVELOPE, "headers": {"x-hb-failures": -4}}, 0, None),
    ("first-failed-str", {**ENVELOPE, "headers": {"x-hb-first-failed-ms": "yesterday",
                                                   "x-hb-failures": 1}}, 1, None),
    ("first-failed-ok", {**ENVELOPE, "headers": {"x-hb-first-failed-ms": 1_700_000_000_000,
                                                  "x-hb-failures": 1}}, 1, 1_700_000_000.0),
    ("last-error-latin1", {**ENVELOPE, "headers": {"x-hb-last-error": NotUtf8("café")}}, 0, None),
    ("not-before-str", {**ENVELOPE, "headers": {"x-hb-not-before-ms": "soon"}}, 0, None),
    # Ten years ahead: waited for, it would hold an ordered queue's head for ever.
    ("not-before-far", {**ENVELOPE, "headers": {
        "x-hb-not-before-ms": round((time.time() + 10 * 365 * 86_400) * 1000)}}, 0, None),
    ("odd-x-death", {**ENVELOPE, "headers": {"x-death": [1, "two", {"count": "x"}],
                                              "x-delivery-count": "many"}}, 0, None),
    ("x-death-table", {**ENVELOPE, "headers": {"x-death": {"reason": "expired"}}}, 0, None),
    ("priority", {**ENVELOPE, "priority": 9}, 0, None),
    ("json-not-json", {"message_id": "F1", "content_type": "json"}, 0, None),
    ("many-headers", {**ENVELOPE, "headers": {f"x-other-{i}": i for i in range(3000)}}, 0, None),
]


@pytest.mark.parametrize(("queue_type", "ordered"), [
    ("quorum", False), ("classic", False), ("classic", True),
])
async def test_foreign_messages_in_a_work_queue_never_stall_the_consumer(
    backends: Callable[..., Any], broker: Broker, prefix: str, queue_type: str, ordered: bool,
) -> None:
    backend = await backends(queue_type=queue_type)
    await backend.declare(Q, ordered=ordered)
    work = f"{prefix}.{Q}"
    async with Outsider(broker) as outsider:
        for label, props, _ in REFUSED:
            await outsider.publish(work, label.encode(), **props)
            await backend.publish(Q, [genuine(f"after-{label}")])
        for label, props, _, _ in DELIVERED:
            await outsider.publish(work, label.encode(), **props)
            await backend.publish(Q, [genuine(f"after-{label}")])
    taker = Taker(backend.consumer(Q, ordered=ordered))
    got: dict[str, Any] = {}
    for _ in range(2 * len(DELIVERED) + len(REFUSED)):
        delivery = await taker.next(within=5)
        key = delivery.envelope.body.decode() if delivery.envelope.message_id == "F1" \
            else delivery.envelope.message_id
        got[key] = delivery
        await backend.ack(delivery)
    await taker.none_within(0.3)
    await taker.close()
    for label, *_ in REFUSED:
        assert f"after-{label}" in got
        assert label not in got
    for label, _, failures, first in DELIVERED:
        assert got[f"after-{label}"].envelope == genuine(f"after-{label}")
        delivery = got[label]
        assert delivery.envelope.body == label.encode()
        assert delivery.failures == failures, label
        assert delivery.first_failed_at == first, label
        assert delivery.not_before == 0.0
    assert got["last-error-latin1"].last_error == "caf\ufffd"
    assert got["json-not-json"].envelope.content_type == "json"  # the queue never reads bodies
    dead = {d.envelope.body.decode(): d for d in await backend.dead_letters(Q)}
    assert set(dead) == {label for label, *_ in REFUSED}
    for label, _, reason in REFUSED:
        assert re.search(reason, dead[label].reason), (label, dead[label].reason)
        assert "not delivered" in dead[label].reason
        assert dead[label].id
    # The dead-lettered copy keeps what arrived, for whoever looks into it.
    assert dead["odd-type"].envelope.content_type == "application/octet-stream"
    assert dead["no-id"].envelope.message_id == dead["no-id"].id


async def test_a_foreign_message_through_a_delay_queue_is_dead_lettered_too(
    backends: Callable[..., Any], broker: Broker, prefix: str,
) -> None:
    backend = await backends()
    await backend.declare(Q)
    async with Outsider(broker) as outsider:
        await outsider.publish(f"{prefix}.{Q}.delay.200ms", b"delayed", content_type="hl7v2")
        await outsider.publish(f"{prefix}.{Q}.delay.200ms", b"ok", **ENVELOPE)
    taker = Taker(backend.consumer(Q))
    delivery = await taker.next(within=5)
    assert delivery.envelope.body == b"ok"  # x-death from the delay queue does no harm
    await backend.ack(delivery)
    await taker.close()
    [dead] = await backend.dead_letters(Q)
    assert dead.envelope.body == b"delayed"
    assert "no message_id" in dead.reason


async def test_a_dead_letter_queue_with_foreign_messages_can_be_listed_and_requeued(
    backends: Callable[..., Any], broker: Broker, prefix: str,
) -> None:
    backend = await backends()
    await backend.declare(Q)
    dead_queue = f"{prefix}.{Q}.dead"
    async with Outsider(broker) as outsider:
        await outsider.publish(dead_queue, b"bare", **ENVELOPE)
        await outsider.publish(dead_queue, b"anonymous")
        await outsider.publish(dead_queue, b"odd", message_id="F2", content_type="hl7v2",
                               headers={"x-death": {"reason": 5}, "x-hb-failures": "two",
                                        "x-hb-reason": NotUtf8("\xff\xfe"),
                                        "x-hb-dead-at-ms": "now", "x-hb-dead-id": 7})
        await outsider.publish(dead_queue, b"deaths", message_id="F3", content_type="hl7v2",
                               headers={"x-death": [{"reason": "rejected", "time": "noon"}]})
    listed = {d.envelope.body.decode(): d for d in await backend.dead_letters(Q)}
    assert set(listed) == {"bare", "anonymous", "odd", "deaths"}
    assert "no reason recorded" in listed["bare"].reason
    assert listed["bare"].id == "F1"
    assert listed["odd"].reason == "\ufffd\ufffd"
    assert listed["odd"].failures == 0 and listed["odd"].dead_at == 0.0
    assert "dead-lettered by the broker (rejected)" in listed["deaths"].reason
    # Without any id it still gets one, the same each time, so it can be requeued alone.
    anonymous = listed["anonymous"].id
    assert anonymous
    again = {d.envelope.body: d.id for d in await backend.dead_letters(Q)}
    assert again[b"anonymous"] == anonymous
    # It is not an envelope: requeueing would only bring it back here, so it stays.
    assert await backend.requeue(Q, [anonymous]) == 0
    assert await backend.requeue(Q) == 3
    taker = Taker(backend.consumer(Q))
    bodies = set()
    for _ in range(3):
        delivery = await taker.next(within=5)
        bodies.add(delivery.envelope.body)
        await backend.ack(delivery)
    await taker.none_within(0.3)
    await taker.close()
    assert bodies == {b"bare", b"odd", b"deaths"}
    [still] = await backend.dead_letters(Q)
    assert still.envelope.body == b"anonymous" and still.id == anonymous


@pytest.mark.parametrize(("arguments", "difference"), [
    ({"x-queue-type": "classic"}, r"x-queue-type.*'quorum'.*'classic'"),
    ({"x-queue-type": "quorum", "x-dead-letter-exchange": "elsewhere"},
     r"x-dead-letter-exchange.*elsewhere"),
])
async def test_a_queue_declared_by_hand_with_other_arguments_fails_start_up_clearly(
    backends: Callable[..., Any], broker: Broker, prefix: str, arguments: dict[str, Any],
    difference: str,
) -> None:
    work = f"{prefix}.{Q}"
    async with Outsider(broker) as outsider:
        await outsider.declare(work, arguments)
    backend = await backends()
    with pytest.raises(ConfigError) as caught:
        await backend.declare(Q)
    text = str(caught.value)
    assert f"queue '{work}'" in text
    assert re.search(difference, text), text
    assert "drain the queue" in text
    # The refusal leaves the backend usable for its other queues.
    await backend.declare(Q2)
    await backend.publish(Q2, [genuine("G")])
    assert await backend.depth(Q2) == 1
