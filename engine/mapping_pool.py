"""Mappings in worker processes, so a CPU-heavy mapping does not hold the event loop.

A mapping with FHIR validation costs about 0.3 ms per message; on the event loop it delays
every ACK behind it and caps a channel at what one core can map. With ``mapping_workers =
N`` the engine starts N processes (``engine.mapping_worker``) that each load the mappings
once, and channel and destination workers hand them payloads (``PooledMapper.apply_async``)
over the worker's stdin and stdout: length-prefixed frames with the bytes unchanged
(``engine.mapping_wire``), written and read by the event loop itself. No pickling and no
helper threads, so handing a message over costs the engine tens of microseconds, not the
quarter of a millisecond a ``ProcessPoolExecutor`` took (its feeder and manager threads
contend with the event loop for the GIL).

A ``MappingError`` raised in a worker arrives as the same ``MappingError`` (its text names
the mapping, rule and path), so what happens to the message is unchanged. A worker that
dies fails what it had in hand with a ``TransientError`` (those messages are retried) and
is started again for the next message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

from engine.contracts import Mapper, Payload
from engine.errors import MappingError, TransientError
from engine.mapping_wire import PREFIX, frame, frame_length, split

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0
# Bytes waiting in a worker's pipe before a sender waits for it to drain.
HIGH_WATER = 1024 * 1024


class _Worker:
    """One worker process and the requests it has in hand."""

    def __init__(self, directory: Path, number: int) -> None:
        self.directory = directory
        self.number = number
        self.proc: asyncio.subprocess.Process | None = None
        self.pending: dict[int, asyncio.Future[list[Payload]]] = {}
        self._ids = itertools.count()
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and (
            self._reader is not None and not self._reader.done())

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.mapping_worker", str(self.directory),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(), name=f"mapping worker {self.number}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT)
        except BaseException:
            await self.close()
            raise

    async def apply(self, name: str, payload: Payload) -> list[Payload]:
        proc = self.proc
        assert proc is not None and proc.stdin is not None
        key = next(self._ids)
        future: asyncio.Future[list[Payload]] = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        proc.stdin.write(frame({"i": key, "m": name, "c": payload.content_type,
                                "h": dict(payload.headers)}, payload.body))
        try:
            if proc.stdin.transport.get_write_buffer_size() > HIGH_WATER:
                await proc.stdin.drain()
            return await future
        except ConnectionError:  # the pipe broke under the write: the worker is gone
            raise TransientError(f"mapping worker {self.number} exited") from None
        finally:
            self.pending.pop(key, None)

    async def _read(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        stdout = proc.stdout
        reason = "exited"
        try:
            while True:
                size = frame_length(await stdout.readexactly(PREFIX))
                header, body = split(await stdout.readexactly(size))
                if "ready" in header:
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(None)
                    continue
                future = self.pending.get(header.get("i", -1))
                if future is None or future.done():
                    continue
                if "e" in header:
                    future.set_exception(MappingError(str(header["e"])))
                    continue
                outputs, at = [], 0
                for content_type, headers, length in header["o"]:
                    outputs.append(Payload(body[at:at + length], content_type, headers))
                    at += length
                future.set_result(outputs)
        except asyncio.IncompleteReadError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"sent an unreadable frame ({type(exc).__name__})"
        finally:
            code = proc.returncode
            error = TransientError(f"mapping worker {self.number} {reason}"
                                   + (f" (code {code})" if code is not None else ""))
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(error)
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(error)

    async def close(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()


class MappingPool:
    """The worker processes; one pool per engine, shared by every pooled mapper."""

    def __init__(self, directory: Path, workers: int) -> None:
        self.directory = directory
        self.workers = [_Worker(directory, n) for n in range(workers)]
        self._restarting: dict[int, asyncio.Task[None]] = {}

    async def start(self) -> None:
        await asyncio.gather(*(w.start() for w in self.workers))

    async def apply(self, name: str, payload: Payload) -> list[Payload]:
        worker = min(self.workers, key=lambda w: len(w.pending) if w.alive else 1 << 30)
        if not worker.alive:
            await self._restart(worker)
        return await worker.apply(name, payload)

    async def _restart(self, worker: _Worker) -> None:
        """Start a dead worker again; concurrent callers share the one restart."""
        task = self._restarting.get(worker.number)
        if task is None:
            log.warning("mapping worker %d is not running: starting it again", worker.number)

            async def again() -> None:
                await worker.close()
                await worker.start()

            task = asyncio.ensure_future(again())
            self._restarting[worker.number] = task
            task.add_done_callback(lambda _: self._restarting.pop(worker.number, None))
        try:
            await asyncio.shield(task)
        except Exception as exc:
            raise TransientError(f"mapping worker {worker.number} cannot start: {exc}") from None

    async def close(self) -> None:
        await asyncio.gather(*(w.close() for w in self.workers), return_exceptions=True)


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
