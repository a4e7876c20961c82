"""Shared fixtures of the payment tests: a database, an ingest double, a waiting helper, and
the harness every gateway rig (``tests.payments.gateway_rig``) is built on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from engine.contracts import IngestResult
from engine.database import Database
from engine.errors import TransientError
from engine.message import Message
from tests.payments.gateway_rig import Harness


class Channel:
    """The engine's ingest as a source sees it: keeps messages, dedups by dedup key."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.calls = 0
        self.refuse_next = 0  # the engine cannot take messages now (queue full, disk error)
        self._seen: dict[str, str] = {}

    async def __call__(self, message: Message, hl7: object = None) -> IngestResult:
        self.calls += 1
        if self.refuse_next > 0:
            self.refuse_next -= 1
            raise TransientError("cannot accept the message now")
        key = message.dedup_key or message.id
        if key in self._seen:
            return IngestResult(self._seen[key], duplicate=True)
        self._seen[key] = message.id
        self.messages.append(message)
        return IngestResult(message.id, duplicate=False)


Eventually = Callable[..., Awaitable[None]]


async def _eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def eventually() -> Eventually:
    """Wait until ``await check()`` is true (asynchronous notifications take a moment)."""
    return _eventually


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "hisbridge.db", synchronous="NORMAL")
    await database.open()
    yield database
    await database.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def channel() -> Channel:
    return Channel()


@pytest.fixture
def harness(tmp_path: Path, db: Database, http: aiohttp.ClientSession,
            channel: Channel) -> Harness:
    return Harness(tmp_path, db, http, channel)
