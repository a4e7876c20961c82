"""The payment callback endpoint: an engine ``Source`` shared by every gateway.

For each callback, in this order:

1. read the body (bounded), then let the gateway's verifier check the signature (and the
   timestamp window, the merchant id, the decryption) — a refusal is audited and answered
   with failure before anything else is looked at;
2. check the event against the order we created (unknown order, wrong amount → audited and
   refused) and apply it, all in one committed transaction (``PaymentStore.apply_event``);
3. hand the event to the engine channel (``ingest``), so it flows on (to the HIS ...);
4. only then answer the gateway with success.

A duplicate (same idempotency key) changes nothing and is answered with success; it is
handed to the engine only if an earlier copy was stored but could not be (the engine was
unavailable), so the channel hears of each fact once per process, and the engine's dedup key
covers the rest. When the store or the engine cannot take the event, the gateway is answered
with a failure and retries on its schedule.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Protocol

import orjson
from aiohttp import web
from pydantic import BaseModel

from adapters.payments.errors import CallbackRejected
from adapters.payments.model import PaymentEvent
from adapters.payments.store import Applied, PaymentStore
from engine.contracts import Ingest
from engine.database import Database, StoreUnavailable
from engine.errors import ConfigError, TransientError
from engine.message import Message
from engine.settings import Secret, split_host_port

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NotifyRequest:
    headers: Mapping[str, str]
    body: bytes
    content_type: str
    remote: str


@dataclass(frozen=True, slots=True)
class NotifyAnswer:
    status: int
    body: bytes
    content_type: str


class NotifyVerifier(Protocol):
    """One gateway's callback rules: what proves a callback genuine, and how to answer."""

    gateway: str

    def load(self) -> None:
        """Resolve and load the keys now, so a bad reference fails at start (``ConfigError``)
        rather than at the first callback."""
        ...

    async def verify(self, request: NotifyRequest) -> PaymentEvent:
        """The verified event; raises ``CallbackRejected`` for anything not to believe."""
        ...

    def answer(self, accepted: bool, reason: str = "", detail: str = "") -> NotifyAnswer:
        """The reply the gateway understands. ``reason`` ``unavailable`` means "retry";
        ``detail`` says what was wrong (which field or header), for the gateway's logs."""
        ...


def _secret_missing(verifier: NotifyVerifier) -> bool:
    """Whether a secret the verifier's account settings reference cannot be resolved (not
    set, no such file), as opposed to one that resolves to an unusable key."""

    def walk(node: object) -> bool:
        if isinstance(node, Secret):
            return not node.available()
        if isinstance(node, BaseModel):
            return any(walk(getattr(node, name)) for name in type(node).model_fields)
        if isinstance(node, list):
            return any(walk(item) for item in node)
        return False

    return walk(getattr(verifier, "settings", None))


def unique_fields(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """A form's fields; a field given twice is refused, since which copy the signature
    covered and which one we would act on could differ."""
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise CallbackRejected("malformed", f"field {name[:40]} is given more than once")
        fields[name] = value
    return fields


class _KeyedLocks:
    """One lock per idempotency key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class PaymentNotifySource:
    """Listens for one gateway's callbacks on ``listen`` + ``path``.

    Args:
        channel: the engine channel the events flow into.
        verifier: the gateway's callback rules.
        listen: ``host:port`` (port 0 picks a free port; see ``port`` after ``start``).
        database: the SQLite file for payment state when no ``Database`` is given with
            ``use_database`` (inside the engine, give it the engine's).
    """

    def __init__(
        self,
        *,
        channel: str,
        verifier: NotifyVerifier,
        listen: str = "127.0.0.1:0",
        path: str = "/notify",
        database: str = "data/hisbridge.db",
        max_body: int = 64 * 1024,
    ) -> None:
        self.channel = channel
        self.verifier = verifier
        self.gateway = verifier.gateway
        self.path = path
        self.max_body = max_body
        self._host, self._port = split_host_port(listen)
        self._database_path = database
        self._db: Database | None = None
        self._own_db = False
        self.store: PaymentStore | None = None
        self._runner: web.AppRunner | None = None
        self._ingest: Ingest | None = None
        self._locks = _KeyedLocks()
        self.port = 0

    def use_database(self, db: Database) -> None:
        """Share an open database (the engine's) instead of opening ``database``."""
        self._db = db

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}{self.path}"

    async def start(self, ingest: Ingest) -> None:
        try:
            self.verifier.load()
        except ConfigError as exc:
            if not _secret_missing(self.verifier):
                raise
            # Keys not on this machine yet (a fresh install): listen anyway and answer every
            # callback with a failure until they are, so the gateway keeps retrying.
            log.warning("payment notify source %s: keys not available, callbacks are refused "
                        "until they are: %s", self.channel, exc)
        self._ingest = ingest
        if self._db is None:
            self._db = Database(self._database_path)
            await self._db.open()
            self._own_db = True
        self.store = PaymentStore(self._db)
        await self.store.start()
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("payment notify source listening: gateway=%s channel=%s port=%d",
                 self.gateway, self.channel, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_db and self._db is not None:
            await self._db.close()
            self._db = None
            self._own_db = False

    def _reply(self, accepted: bool, reason: str = "", detail: str = "") -> web.Response:
        answer = self.verifier.answer(accepted, reason, detail)
        return web.Response(status=answer.status, body=answer.body,
                            content_type=answer.content_type)

    async def _handle(self, request: web.Request) -> web.Response:
        assert self.store is not None
        remote = request.remote or ""
        try:
            # A declared length over the limit is refused before any of the body is read;
            # a chunked one while it streams (aiohttp stops at ``client_max_size``).
            if (request.content_length or 0) > self.max_body:
                raise web.HTTPRequestEntityTooLarge(self.max_body, request.content_length or 0)
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            detail = f"callback body over the limit of {self.max_body} bytes"
            with suppress(StoreUnavailable):
                await self.store.audit(self.gateway, "too_large", detail, remote=remote)
            response = self._reply(False, "too_large", detail)
            response.force_close()
            return response
        notify = NotifyRequest(request.headers, body, request.content_type, remote)
        try:
            event = await self.verifier.verify(notify)
        except ConfigError as exc:
            log.warning("payment callback not verified, keys not available: gateway=%s (%s)",
                        self.gateway, exc)
            return self._reply(False, "unavailable")
        except CallbackRejected as refused:
            log.warning("payment callback refused: gateway=%s reason=%s order=%s",
                        self.gateway, refused.reason, refused.out_trade_no or "-")
            try:
                await self.store.audit(self.gateway, refused.reason, refused.detail,
                                       out_trade_no=refused.out_trade_no, remote=remote)
            except StoreUnavailable:
                return self._reply(False, "unavailable")
            return self._reply(False, refused.reason, refused.detail)
        async with self._locks.hold(event.key):
            return await self._accept(event, remote)

    async def _accept(self, event: PaymentEvent, remote: str) -> web.Response:
        assert self.store is not None
        assert self._ingest is not None
        try:
            result = await self.store.apply_event(event, remote=remote)
        except StoreUnavailable:
            log.error("payment callback not stored (store unavailable): gateway=%s event=%s",
                      self.gateway, event.key)
            return self._reply(False, "unavailable")
        if result.outcome is Applied.REJECTED:
            log.warning("payment callback refused: gateway=%s reason=%s order=%s",
                        self.gateway, result.reason, event.out_trade_no)
            return self._reply(False, result.reason)
        log.info("payment callback %s: gateway=%s event=%s", result.outcome.value,
                 self.gateway, event.key)
        if not result.forwarded:
            try:
                state = result.order.state.value if result.order is not None else ""
                await self._ingest(self._message(result.event or event, state))
                await self.store.mark_forwarded(self.gateway, event.key)
            except (TransientError, StoreUnavailable) as exc:
                log.warning("payment event stored but not yet taken by the channel, the "
                            "gateway will retry: gateway=%s event=%s (%s)", self.gateway,
                            event.key, type(exc).__name__)
                return self._reply(False, "unavailable")
        return self._reply(True)

    def _message(self, event: PaymentEvent, order_state: str) -> Message:
        key = f"{self.gateway}:{event.key}"
        body = dict(event.as_json(), order_state=order_state)
        return Message(
            channel=self.channel,
            content_type="json",
            body=orjson.dumps(body),
            headers={"Idempotency-Key": key, "X-Payment-Gateway": self.gateway,
                     "X-Payment-Event": event.kind.value},
            correlation_id=event.out_trade_no,
            dedup_key=key,
        )
