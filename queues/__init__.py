"""Queue backends behind one contract (`queues.contract.QueueBackend`).

- `queues.sqlite`: the embedded default; shares the message store's database so that
  "stored" and "enqueued" are one transaction.
- `queues.memory`: an in-memory twin for unit tests of pure logic.
- `queues.rabbitmq`: RabbitMQ for several engines on several machines.

To add a backend, start from `queues/memory.py` (the smallest complete one) and run
`tests/test_queue_contract.py` against it.
"""
