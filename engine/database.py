"""The embedded SQLite database: one writer thread that groups commits, and reader threads.

Why a writer thread: with ``synchronous=FULL`` every commit costs an fsync (milliseconds on
real disks). Writes from every task are posted to one thread, which runs all that are waiting
in a single transaction and resolves their futures after the commit. Under load a commit
carries hundreds of operations, so durability costs one fsync per batch, not per message;
when idle, a lone write commits at once (no added latency).

A batch runs as one transaction. If an operation raises, the batch is rolled back and its
operations are run again one transaction each, so the failing one fails alone and its
neighbours still commit (operations must therefore keep no Python state across attempts).
``on_commit`` callbacks run on the event loop in commit order, even when the caller that
submitted the write has been cancelled: the queue relies on that to hand new rows to its
consumers in order.

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

from engine.logsetup import log_failure

T = TypeVar("T")

log = logging.getLogger(__name__)

WriteOp = Callable[[sqlite3.Connection], Any]


class StoreUnavailable(Exception):
    """The database could not commit (disk full, I/O error, closed)."""


_STOP = object()

# (future, value, on_commit callback, error) for each operation of a batch.
_Result = tuple["asyncio.Future[Any]", Any, "Callable[[Any], None] | None", "BaseException | None"]


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

    async def write(
        self, op: Callable[[sqlite3.Connection], T],
        on_commit: Callable[[T], None] | None = None,
    ) -> T:
        """Run ``op`` in the writer thread inside a transaction; return once it is committed.

        ``on_commit(result)`` runs on the event loop right after the commit, before the
        caller resumes, and runs even if the caller was cancelled meanwhile.
        """
        if self._closed:
            raise StoreUnavailable("database is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._ops.put((op, fut, on_commit))
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
        leftovers: list[_Result] = []
        while True:
            try:
                item = self._ops.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                leftovers.append((item[1], None, None, StoreUnavailable("database is closed")))
        if leftovers:
            loop.call_soon_threadsafe(_resolve_all, leftovers)
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> list[_Result]:
        try:
            return self._run_transaction(conn, batch)
        except _OpFailed:
            pass
        # One operation failed: give each its own transaction so only that one fails.
        results: list[_Result] = []
        for item in batch:
            try:
                results.extend(self._run_transaction(conn, [item]))
            except _OpFailed as failed:
                results.append((item[1], None, None, failed.error))
        return results

    def _run_transaction(self, conn: sqlite3.Connection, batch: list[Any]) -> list[_Result]:
        """Run ``batch`` in one transaction; raise _OpFailed (rolled back) if an op raises."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            err = StoreUnavailable(f"cannot begin a transaction: {exc}")
            return [(fut, None, None, err) for _, fut, _ in batch]
        results: list[_Result] = []
        for op, fut, on_commit in batch:
            try:
                value = op(conn)
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise _OpFailed(exc) from None
            results.append((fut, value, on_commit, None))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            err = StoreUnavailable(f"commit failed: {exc}")
            return [(fut, None, None, err) for fut, _, _, _ in results]
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


class _OpFailed(Exception):
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _resolve_all(results: list[_Result]) -> None:
    for fut, value, on_commit, exc in results:
        if exc is None and on_commit is not None:
            try:
                on_commit(value)
            except Exception as err:
                log_failure(log, err, "on_commit callback failed")
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
