"""Mappings in worker processes, so a CPU-heavy mapping does not hold the event loop.

A mapping with fhir.resources validation costs about a millisecond per message; on the event
loop that caps a channel near 1,000 messages/s on one core and delays every ACK behind it.
With ``mapping_workers = N`` the engine starts N processes that each load the mappings once,
and channel and destination workers send them the payload (``PooledMapper.apply_async``).
Handing a message over costs about 0.25 ms of the engine's CPU, so the pool pays off when the
mapping costs more than that and there are cores to run it on.

A ``MappingError`` raised in a worker arrives in the engine as the same ``MappingError`` (its
text names the mapping, rule and path), so what happens to the message is unchanged.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from engine.contracts import Mapper, Payload
from engine.errors import MappingError, TransientError

_mappers: dict[str, Mapper] = {}

Wire = tuple[bytes, str, dict[str, str]]


def _load(directory: str) -> None:
    from engine.mapping import load_mappings

    _mappers.update(load_mappings(Path(directory)))


def _apply(name: str, body: bytes, content_type: str, headers: dict[str, str]) -> list[Wire]:
    try:
        outputs = _mappers[name].apply(Payload(body, content_type, headers))
    except MappingError:
        raise
    except Exception as exc:  # the engine sees a MappingError, as in-process
        raise MappingError(f"mapping {name} failed: {type(exc).__name__}: {exc}") from None
    return [(o.body, o.content_type, dict(o.headers)) for o in outputs]


class MappingPool:
    """The worker processes; one per engine, shared by every pooled mapper."""

    def __init__(self, directory: Path, workers: int) -> None:
        # forkserver: workers start from a clean interpreter, not a copy of the engine with
        # its threads and sockets.
        context = multiprocessing.get_context("forkserver")
        self.executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_load,
            initargs=(str(directory),),
        )

    async def apply(self, name: str, payload: Payload) -> list[Payload]:
        loop = asyncio.get_running_loop()
        try:
            wire = await loop.run_in_executor(
                self.executor, _apply, name, payload.body, payload.content_type,
                dict(payload.headers),
            )
        except BrokenProcessPool as exc:
            raise TransientError(f"mapping worker died: {exc}") from None
        return [Payload(body, ct, headers) for body, ct, headers in wire]

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class PooledMapper:
    """A mapping run by the pool. ``apply`` (sync) still runs it here, for tools and tests."""

    def __init__(self, local: Mapper, pool: MappingPool) -> None:
        self.name = local.name
        self.local = local
        self.pool = pool

    def apply(self, payload: Payload) -> list[Payload]:
        return self.local.apply(payload)

    async def apply_async(self, payload: Payload) -> list[Payload]:
        return await self.pool.apply(self.name, payload)


async def map_payload(mapper: Mapper, payload: Payload) -> list[Payload]:
    """Apply a mapping in a worker process when it is pooled, here otherwise."""
    if isinstance(mapper, PooledMapper):
        return await mapper.apply_async(payload)
    return mapper.apply(payload)


def pooled(mappers: Mapping[str, Mapper], pool: MappingPool) -> dict[str, Mapper]:
    return {name: PooledMapper(m, pool) for name, m in mappers.items()}
