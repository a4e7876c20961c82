"""Fixtures for the queue backends: the broker, a vhost for this run, and a TCP proxy.

RabbitMQ tests are marked ``rabbitmq``. When the broker is not reachable they are skipped,
unless ``HISBRIDGE_REQUIRE_RABBITMQ=1`` (CI), where they fail: a missing broker must not
look like a green run.

All RabbitMQ tests of one run share a fresh vhost (created with ``rabbitmqctl`` when it can
be used, else ``/``), and each test uses its own queue-name prefix and deletes its queues, so
runs on the same machine never see each other's messages.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.queues.queue_support import (
    BROKER,
    Broker,
    TcpProxy,
    broker_reachable,
    can_administer,
    rabbitmqctl,
    wait_broker_up,
)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    if not broker_reachable():
        message = f"RabbitMQ is not reachable at {BROKER}"
        if os.environ.get("HISBRIDGE_REQUIRE_RABBITMQ") == "1":
            pytest.fail(message + " and HISBRIDGE_REQUIRE_RABBITMQ=1", pytrace=False)
        pytest.skip(message)
    administered = can_administer()
    vhost = "/"
    if administered:
        vhost = f"hisbridge-test-{uuid.uuid4().hex[:10]}"
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield Broker(BROKER, vhost, administered)
    if administered:
        wait_broker_up()
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def proxy(broker: Broker) -> AsyncIterator[TcpProxy]:
    relay = TcpProxy(broker.host)
    await relay.start()
    yield relay
    await relay.cut()
