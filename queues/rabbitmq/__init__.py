"""The RabbitMQ queue backend: several hisbridge engines on several machines, one broker.

- `config`: ``RabbitQueueConfig`` (``[queue] backend = "rabbitmq"``).
- `topology`: the queues and exchanges behind one logical queue, and their arguments.
- `codec`: envelopes and their attempt history as AMQP messages.
- `backend`: ``RabbitQueue``, the ``QueueBackend``: connections, confirmed publishing, settling.
- `consumer`: one work queue's consumer: prefetch, early arrivals, redelivery counting.
- `deadletters`: listing and requeueing dead letters.

Deployment, broker settings and what happens on a broker restart: docs/operations.md.
"""

from queues.rabbitmq.config import RabbitQueueConfig

__all__ = ["RabbitQueueConfig"]
