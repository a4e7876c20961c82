"""The embedded SQLite database: one writer thread that groups commits, and reader threads.

Why a writer thread: with ``synchronous=FULL`` every commit costs an fsync (milliseconds on
real disks). Writes from every task are posted to one thread, which runs all that are waiting
in a single transaction and resolves their futures after the commit. Under load a commit
carries hundreds of operations, so durability costs one fsync per batch, not per message;
when idle, a lone write commits at once (no added latency).

Each operation runs inside its own savepoint, so one failing operation (an integrity error)
fails only its own future, not its neighbours in the batch.

Readers use separate connections (WAL lets them run beside the writer) on a small thread pool,
so the event loop never blocks on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

WriteOp = Callable[[sqlite3.Connection], Any]


class StoreUnavailable(Exception):
    """The database could not commit (disk full, I/O error, closed)."""


_STOP = object()


class Database:
    """One SQLite file shared by the message store, the embedded queue and the workflows.

    Args:
        path: the database file; its directory is created if missing.
        synchronous: SQLite ``synchronous`` pragma; ``FULL`` makes each commit durable.
        max_batch: most operations grouped into one transaction.
        readers: reader threads.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        max_batch: int = 512,
        readers: int = 2,
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.max_batch = max_batch
        self._ops: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="sqlite-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._closed = False
        self.commits = 0
        self.committed_ops = 0
        self._after_commit: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._writer_main, args=(loop, ready), name="sqlite-writer", daemon=True
        )
        self._thread.start()
        await ready

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._ops.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    def _connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        if readonly:
            conn.execute("PRAGMA query_only=ON")
        return conn

    # -- writes ----------------------------------------------------------------------------

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in the writer thread inside a transaction; return once it is committed."""
        if self._closed:
            raise StoreUnavailable("database is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._ops.put((op, fut))
        return await fut

    def _writer_main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except Exception as exc:  # the path is unusable: report it to open()
            loop.call_soon_threadsafe(_set_exception, ready, exc)
            return
        loop.call_soon_threadsafe(_set_result, ready, None)
        stopping = False
        while not stopping:
            item = self._ops.get()
            if item is _STOP:
                break
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._ops.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            results = self._run_batch(conn, batch)
            loop.call_soon_threadsafe(_resolve_all, results)
        # Fail whatever arrived after the stop request instead of leaving it hanging.
        leftovers = []
        while True:
            try:
                item = self._ops.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                leftovers.append((item[1], None, StoreUnavailable("database is closed")))
        if leftovers:
            loop.call_soon_threadsafe(_resolve_all, leftovers)
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[WriteOp, asyncio.Future[Any]]]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            err = StoreUnavailable(f"cannot begin a transaction: {exc}")
            return [(fut, None, err) for _, fut in batch]
        for op, fut in batch:
            try:
                conn.execute("SAVEPOINT op")
                value = op(conn)
                conn.execute("RELEASE op")
                results.append((fut, value, None))
            except BaseException as exc:  # noqa: BLE001 - any failure belongs to its caller
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                results.append((fut, None, exc))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            err = StoreUnavailable(f"commit failed: {exc}")
            return [(fut, None, err) for fut, _, _ in results]
        self.commits += 1
        self.committed_ops += len(batch)
        return results

    # -- reads -----------------------------------------------------------------------------

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` on a reader connection in a thread; sees everything committed so far."""
        if self._closed:
            raise StoreUnavailable("database is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_in_thread, op)

    def _read_in_thread(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(readonly=True)
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return op(conn)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _resolve_all(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in results:
        if fut.done():  # the caller was cancelled; the write still happened
            continue
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)


def apply_schema(conn: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated DDL statements inside the current transaction.

    ``executescript`` would commit the writer's open transaction first; DDL is transactional
    in SQLite, so plain statements keep schema creation atomic with the batch.
    """
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)
