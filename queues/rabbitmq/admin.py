"""Removing a deployment's queues from the broker (benchmarks, tests, decommissioning).

The engine never deletes a queue by itself: queues hold messages that were acknowledged to
peers. This is for throwaway prefixes, and for an operator who has drained a deployment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import aio_pika
from aio_pika.exceptions import AMQPError

from queues.rabbitmq.config import RabbitQueueConfig
from queues.rabbitmq.topology import QueueTopology


async def drop_topology(config: RabbitQueueConfig, logical: Sequence[str]) -> int:
    """Delete every queue behind the ``logical`` queues under ``config.prefix`` (ordered or
    not) and the prefix's dead-letter exchange. Returns how many queues were deleted."""
    connection = await aio_pika.connect(str(config.url()), timeout=config.publish_timeout)
    deleted = 0
    try:
        channel = await connection.channel()
        names: list[str] = []
        for queue in logical:
            for ordered in (False, True):
                topo = QueueTopology(queue, config.prefix, config.queue_type, ordered,
                                     config.delivery_limit, None, tuple(config.delay_tiers))
                names.extend(n for n in topo.all_queues() if n not in names)
        for name in names:
            try:
                await channel.queue_delete(name)
                deleted += 1
            except AMQPError:  # absent: the broker closed the channel, open another
                channel = await connection.channel()
        with contextlib.suppress(AMQPError):
            await channel.exchange_delete(f"{config.prefix}.dead")
    finally:
        await connection.close()
    return deleted
