"""The engine: builds everything from a Config, runs it, and stops it cleanly.

Start order is inside-out (database, store, queue backend, destinations, workers, sources,
admin) so nothing is accepted before it can be processed; stop order is the reverse, so
sources stop accepting first and in-flight work finishes or stays safely queued.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import ChannelConfig, Config
from engine.contracts import Mapper, Source
from engine.database import Database
from engine.errors import ConfigError
from engine.filters import Filter
from engine.ingest import ChannelIngest, Fanout, channel_queue
from engine.logsetup import log_failure
from engine.mapping_pool import MappingPool, pooled
from engine.message import Message
from engine.metrics import Gauge, Metrics
from engine.outbox import Outbox, outbox_for
from engine.pipeline import ChannelWorker, DestinationRuntime, DestinationWorker
from engine.retention import run_retention
from engine.store import REPLAYED, MessageStore
from queues.contract import QueueBackend
from queues.rabbitmq.backend import RabbitQueue
from queues.sqlite import SqliteQueue

log = logging.getLogger(__name__)


def load_mappers(config: Config) -> dict[str, Mapper]:
    """Every mapping the config names, loaded from ``mappings_dir`` (ConfigError if missing)."""
    names = {c.mapping for c in config.channels if c.mapping}
    names |= {d.mapping for c in config.channels for d in c.destinations if d.mapping}
    if not names:
        return {}
    directory = config.resolve(config.mappings_dir)
    try:
        from engine.mapping import load_mappings
    except ImportError as exc:  # pragma: no cover - the mapping package ships with the engine
        raise ConfigError(f"mappings are not available: {exc}") from None
    mappers = load_mappings(directory)
    missing = sorted(n for n in names if n not in mappers)
    if missing:
        raise ConfigError(
            f"unknown mapping(s) {', '.join(missing)} (not found in {directory})",
            file=config.file, path="mapping",
        )
    return {n: mappers[n] for n in names}


def build_backend(config: Config, db: Database) -> QueueBackend:
    queue_cfg: Any = config.queue
    if queue_cfg.backend == "sqlite":
        return SqliteQueue(db, max_depth=queue_cfg.max_depth)
    return queue_cfg.build()  # type: ignore[no-any-return]


@dataclass
class ChannelRuntime:
    config: ChannelConfig
    source: Source
    ingest: ChannelIngest
    worker: ChannelWorker
    destinations: list[DestinationRuntime]
    dest_workers: list[DestinationWorker]


class Engine:
    """One running hisbridge process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.db = Database(
            config.resolve(config.store.path),
            synchronous=config.store.synchronous,
            max_batch=config.store.max_batch,
        )
        self.store = MessageStore(self.db)
        self.backend: QueueBackend = build_backend(config, self.db)
        self.channels: dict[str, ChannelRuntime] = {}
        self.admin: Any = None
        self.admin_token = ""
        self.outbox: Outbox | None = None
        self.mapping_pool: MappingPool | None = None
        self._retention: asyncio.Task[None] | None = None
        self.started_at = 0.0
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------

    def _pool_mappers(self, mappers: dict[str, Mapper]) -> dict[str, Mapper]:
        """Run the mappings in worker processes when ``mapping_workers`` asks for it."""
        if not mappers or not self.config.mapping_workers:
            return mappers
        self.mapping_pool = MappingPool(
            self.config.resolve(self.config.mappings_dir), self.config.mapping_workers
        )
        return pooled(mappers, self.mapping_pool)

    async def start(self) -> None:
        # The SQLite writer thread needs the GIL briefly for each batch; with Python's
        # default 5 ms switch interval a commit can wait that long behind the event loop,
        # which shows directly in ACK latency. 0.5 ms keeps the handoff short.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        mappers = self._pool_mappers(load_mappers(self.config))
        await self.db.open()
        try:
            if self.mapping_pool is not None:
                await self.mapping_pool.start()
            await self.store.start()
            await self.backend.start()
            for ch in self.config.channels:
                if ch.enabled:
                    self.channels[ch.name] = await self._build_channel(ch, mappers)
            self._wire_responses()
            for rt in self.channels.values():
                for dw in rt.dest_workers:
                    dw.start()
                rt.worker.start()
            if not isinstance(self.backend, SqliteQueue):
                # Republish what a crashed run stored but may not have published.
                self.outbox = outbox_for(self.db, self.backend)
                await self.outbox.start()
            for rt in self.channels.values():
                await rt.source.start(rt.ingest)
            self._register_gauges()
            if self.config.store.retention_days:
                self._retention = asyncio.create_task(
                    run_retention(self.db, self.config.store.retention_days), name="retention"
                )
            if self.config.admin.enabled:
                from engine.admin import AdminServer

                self.admin_token = self._admin_token()
                self.admin = AdminServer(self, self.admin_token)
                await self.admin.start(self.config.admin.listen)
        except BaseException:
            await self.stop()
            raise
        self.started_at = time.time()
        self._started = True
        log.info("engine started: %d channel(s)", len(self.channels))

    async def _build_channel(self, ch: ChannelConfig, mappers: dict[str, Mapper]) -> ChannelRuntime:
        dests: list[DestinationRuntime] = []
        for dcfg in ch.destinations:
            adapter = dcfg.build(ch.name)
            await adapter.start()
            dests.append(DestinationRuntime(
                channel=ch.name, name=dcfg.name, adapter=adapter,
                policy=dcfg.retry.apply(self.config.retry), ordered=dcfg.ordered,
                concurrency=dcfg.concurrency,
                filter=Filter(dcfg.filter) if dcfg.filter else None,
                mapper=mappers[dcfg.mapping] if dcfg.mapping else None,
            ))
        await self.backend.declare(channel_queue(ch.name))
        for d in dests:
            await self.backend.declare(d.queue, ordered=d.ordered)
        direct = ch.mapping is None and ch.filter is None
        ingest = ChannelIngest(
            ch.name, dedup=ch.dedup, db=self.db, store=self.store, backend=self.backend,
            metrics=self.metrics, dedup_window=ch.dedup_window_days * 86_400,
            fanout=[Fanout(d.queue, d.name, d.filter) for d in dests] if direct else None,
        )
        worker = ChannelWorker(
            ch.name, db=self.db, backend=self.backend, metrics=self.metrics,
            mapper=mappers[ch.mapping] if ch.mapping else None,
            filter=Filter(ch.filter) if ch.filter else None, destinations=dests,
            prefetch=ch.prefetch,
        )
        dest_workers = [
            DestinationWorker(d, db=self.db, backend=self.backend, metrics=self.metrics,
                              store=self.store)
            for d in dests
        ]
        source = ch.source.build(ch.name)
        use_database = getattr(source, "use_database", None)
        if use_database is not None:
            # Sources that keep their own tables (payment callbacks) share the engine's
            # database and its single writer instead of opening the file a second time.
            use_database(self.db)
        return ChannelRuntime(ch, source, ingest, worker, dests, dest_workers)

    def _wire_responses(self) -> None:
        """Point each ``response_to`` destination at its target channel's ingest."""
        for rt in self.channels.values():
            for dest, dcfg in zip(rt.destinations, rt.config.destinations, strict=True):
                if dcfg.response_to is None:
                    continue
                target = self.channels.get(dcfg.response_to)
                if target is None:
                    raise ConfigError(
                        f"channel {rt.config.name} destination {dest.name}: response_to "
                        f"channel {dcfg.response_to} is not enabled"
                    )
                dest.respond = target.ingest

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, finish in-flight work (up to ``grace`` s), then close everything."""
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
            self._retention = None
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        for rt in self.channels.values():
            try:
                await rt.source.stop()
            except Exception as exc:
                log_failure(log, exc, "channel %s: source did not stop cleanly", rt.config.name)
        for rt in self.channels.values():
            await rt.worker.stop(grace)
        await asyncio.gather(
            *(dw.stop(grace) for rt in self.channels.values() for dw in rt.dest_workers)
        )
        for rt in self.channels.values():
            for d in rt.destinations:
                try:
                    await d.adapter.close()
                except Exception as exc:
                    log_failure(log, exc, "destination %s/%s did not close cleanly",
                                d.channel, d.name)
        self.channels.clear()
        if self.outbox is not None:
            await self.outbox.close()
            self.outbox = None
        await self.backend.close()
        await self.db.close()
        if self.mapping_pool is not None:
            await self.mapping_pool.close()
            self.mapping_pool = None
        self._started = False
        log.info("engine stopped")

    def _admin_token(self) -> str:
        token = self.config.admin.token
        if token is not None:
            return token.get()
        path = self.config.resolve(self.config.store.path).parent / "admin.token"
        if path.exists():
            return path.read_text(encoding="utf-8").strip()
        value = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(value + "\n", encoding="utf-8")
        log.info("admin token written to %s", path)
        return value

    def _register_gauges(self) -> None:
        def depths() -> dict[tuple[tuple[str, str], ...], float]:
            out: dict[tuple[tuple[str, str], ...], float] = {}
            if isinstance(self.backend, SqliteQueue):
                for queue, n in self.backend._depth.items():
                    out[(("queue", queue),)] = float(n)
            elif isinstance(self.backend, RabbitQueue):
                for queue, n in self.backend.known_depths().items():
                    out[(("queue", queue),)] = float(n)
            return out

        def health() -> dict[tuple[tuple[str, str], ...], float]:
            states = {"ok": 0.0, "retrying": 1.0, "failing": 2.0}
            return {
                (("channel", d.channel), ("destination", d.name)): states[d.health.state]
                for rt in self.channels.values() for d in rt.destinations
            }

        self.metrics.gauges = [
            Gauge("hisbridge_queue_depth", "Envelopes waiting per queue (ready or delayed).",
                  depths),
            Gauge("hisbridge_destination_state",
                  "Destination state: 0 ok, 1 retrying, 2 failing.", health),
        ]

    # -- operations used by the admin API and the demo ---------------------------------------

    def source_port(self, channel: str) -> int:
        """The port a channel's source listens on (useful with port 0 in tests)."""
        return int(getattr(self.channels[channel].source, "port", 0))

    async def replay(self, message_id: str) -> str:
        """Put a stored message through its channel again as a new message; returns its id."""
        stored = await self.store.get(message_id)
        if stored is None:
            raise KeyError(message_id)
        rt = self.channels.get(stored.channel)
        if rt is None:
            raise KeyError(f"channel {stored.channel} is not running")
        copy = Message(
            channel=stored.channel, content_type=stored.content_type, body=stored.body,
            headers=dict(stored.headers), correlation_id=stored.correlation_id or message_id,
        )
        ingest = ChannelIngest(
            stored.channel, dedup=[], db=self.db, store=self.store, backend=self.backend,
            metrics=self.metrics,
        )
        result = await ingest(copy)
        await self.db.write(
            lambda c: MessageStore.record(c, message_id, REPLAYED, detail=f"as {result.message_id}")
        )
        return result.message_id

    async def readiness(self) -> dict[str, Any]:
        """Store writable, queue backend reachable, and each destination's state."""
        checks: dict[str, Any] = {}
        ok = True
        try:
            await asyncio.wait_for(self.db.write(lambda c: c.execute("SELECT 1").fetchone()), 5)
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"error: {type(exc).__name__}"
            ok = False
        try:
            await asyncio.wait_for(self.backend.ping(), 5)
            checks["queue"] = "ok"
        except Exception as exc:
            checks["queue"] = f"error: {type(exc).__name__}"
            ok = False
        dests = {}
        for rt in self.channels.values():
            for d in rt.destinations:
                dests[f"{d.channel}/{d.name}"] = {
                    "state": d.health.state,
                    "consecutive_failures": d.health.consecutive_failures,
                    "depth": await self.backend.depth(d.queue),
                }
        checks["destinations"] = dests
        return {"status": "ok" if ok else "unavailable", "checks": checks}


def data_dir(config: Config) -> Path:
    return config.resolve(config.store.path).parent
