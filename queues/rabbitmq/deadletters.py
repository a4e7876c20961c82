"""Listing and requeueing dead letters on a broker that cannot browse a queue.

AMQP has no "peek": a dead-letter queue is read with ``basic.get`` on a channel of its own,
without acking, and closing that channel gives every message back to the queue. Requeueing
publishes a fresh copy to the work queue (confirmed) and only then acks the dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from queues.contract import DeadLetter, QueueUnavailable
from queues.rabbitmq.codec import dead_letter, dead_letter_id, decode, encode, requeueable
from queues.rabbitmq.topology import QueueTopology

if TYPE_CHECKING:
    from queues.rabbitmq.backend import Publish, RabbitQueue

_GONE = (AMQPError, ConnectionError, OSError, ChannelInvalidStateError, TimeoutError)
_BATCH = 200


async def list_dead(backend: RabbitQueue, topo: QueueTopology, *, limit: int) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of one queue, oldest first; the queue is left as it was."""
    channel = await backend.temporary_channel()
    out: list[DeadLetter] = []
    try:
        queue = await channel.get_queue(topo.dead, ensure=False)
        while len(out) < limit:
            message = await _get(queue, backend)
            if message is None:
                break
            out.append(dead_letter(message, topo.logical))
    finally:
        await close_channel(channel)
    return out


async def requeue(backend: RabbitQueue, topo: QueueTopology, ids: Sequence[str] | None) -> int:
    """Move dead letters (all, or those whose id is in ``ids``) back to the work queue.

    A requeued message starts afresh: no failures, no first-failure time (as the embedded
    queue does). One that is not an envelope (``codec.requeueable``) stays where it is: the
    consumer would only refuse it again. Returns how many were moved.
    """
    wanted = None if ids is None else set(ids)
    if wanted is not None and not wanted:
        return 0
    channel = await backend.temporary_channel()
    moved = 0
    try:
        queue = await channel.get_queue(topo.dead, ensure=False)
        batch: list[AbstractIncomingMessage] = []
        while True:
            message = await _get(queue, backend)
            if message is None:
                break
            key = dead_letter_id(message)
            if (wanted is None or key in wanted) and requeueable(message):
                batch.append(message)
                if wanted is not None:
                    wanted.discard(key)
            if len(batch) >= _BATCH:
                moved += await _move(backend, topo, batch)
                batch = []
            if wanted is not None and not wanted:
                break
        moved += await _move(backend, topo, batch)
    finally:
        await close_channel(channel)
    return moved


async def _move(backend: RabbitQueue, topo: QueueTopology,
                messages: list[AbstractIncomingMessage]) -> int:
    if not messages:
        return 0
    publishes: list[Publish] = [("", topo.work, encode(decode(m)[0])) for m in messages]
    await backend.send(publishes)
    for message in messages:
        await message.ack()
    return len(messages)


async def _get(queue: AbstractQueue, backend: RabbitQueue) -> AbstractIncomingMessage | None:
    try:
        async with asyncio.timeout(backend.config.publish_timeout):
            return await queue.get(no_ack=False, fail=False)
    except _GONE as exc:
        raise QueueUnavailable(f"reading dead letters failed: {exc}") from None


async def close_channel(channel: AbstractRobustChannel) -> None:
    """Close a channel of its own; one the broker already closed is no error."""
    with contextlib.suppress(*_GONE, asyncio.CancelledError):
        await asyncio.wait_for(channel.close(), 5)
