"""Shared fixtures: engines on ephemeral ports with their simulators, over real sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engine.config import Config, parse_config
from engine.runtime import Engine
from simulators.fhir import FhirServer
from simulators.his import HisReceiver

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
if not SHARED.exists():  # CI clones may sit elsewhere; the shared folder is a sibling of main
    SHARED = Path(os.environ.get("HISBRIDGE_SHARED", "/work/shared"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_config(
    tmp_path: Path, body: str, *, admin: bool = False, admin_token: str | None = None
) -> Config:
    """A config with the store in ``tmp_path``, fast retries, and the given channels."""
    text = textwrap.dedent(f"""
        mappings_dir = "{REPO / 'mappings'}"
        [store]
        path = "{tmp_path / 'hisbridge.db'}"
        [admin]
        enabled = {'true' if admin else 'false'}
        listen = "127.0.0.1:0"
        {f'token = "{admin_token}"' if admin_token else ""}
        [retry]
        max_attempts = 5
        initial_delay = 0.05
        max_delay = 0.5
        jitter = 0.0
    """) + textwrap.dedent(body)
    return parse_config(text, file="test.toml", base_dir=tmp_path)


@pytest.fixture
async def receiver() -> AsyncIterator[HisReceiver]:
    """The HIS simulator's MLLP receiver, acknowledging AA until told otherwise."""
    r = HisReceiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def fhir() -> AsyncIterator[FhirServer]:
    """The FHIR server simulator, storing what it is sent until told to fail."""
    server = FhirServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def engines() -> AsyncIterator[list[Engine]]:
    """A list the test appends started engines to; all are stopped afterwards."""
    started: list[Engine] = []
    yield started
    for engine in started:
        if engine._started:
            await engine.stop(grace=1.0)


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0,
                   interval: float = 0.02) -> None:
    """Poll until ``predicate()`` is truthy; fail the test with a timeout otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
