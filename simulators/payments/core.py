"""What the payment gateway simulators share: faults, notifications, control endpoints.

Each simulator (``simulators.payments.wechatpay`` ...) is a real protocol peer on its own
aiohttp app. This module gives it:

- ``Faults``: switchable at run time through ``POST /_sim/faults`` (JSON):
  ``latency`` (seconds before each API answer), ``fail_5xx`` (the next N API calls answer
  5xx without doing anything), ``drop_after_commit`` (the next N money calls commit, then the
  connection is dropped with no answer), ``duplicate_notifications`` (each notification is
  sent that many times at once), ``refund_before_payment`` (payment notices are held back
  until the order's refund notice has been sent).
- ``Notifier``: asynchronous notifications to the merchant's notify URL with the gateway's
  real retry schedule, compressed by ``time_factor`` (0.001 turns 15 s into 15 ms).
- ``SimServer``: the app, its control endpoints and its lifecycle. Control endpoints:
  ``POST /_sim/pay`` ``{"out_trade_no": ...}`` (the payer pays), ``GET /_sim/stats``,
  ``GET /_sim/bill-totals?date=YYYY-MM-DD``, ``GET /_sim/keys`` (public keys and
  certificates), ``POST /_sim/notify`` (send one crafted notification and return the
  merchant's answer), ``GET /_sim/notifications``, ``POST /_sim/release`` (send held notices).
- ``write_key_files``: the key material a merchant side needs, written owner-only.
- ``command_line``, ``serve_until_cancelled``, ``run_until_interrupted``: what every
  simulator's ``main(argv)`` / ``serve(...)`` share (``hisbridge simulate <gateway>``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)

CHINA = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")


def china_now() -> dt.datetime:
    return dt.datetime.now(CHINA)


@dataclass
class Faults:
    latency: float = 0.0
    fail_5xx: int = 0
    drop_after_commit: int = 0
    duplicate_notifications: int = 1
    refund_before_payment: bool = False

    def update(self, data: dict[str, Any]) -> None:
        for name, value in data.items():
            if name not in self.__dataclass_fields__:
                raise ValueError(f"unknown fault {name!r}")
            if name == "refund_before_payment":
                if not isinstance(value, bool):
                    raise ValueError(f"{name} is true or false")
            elif name == "latency":
                if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"{name} is a number of seconds >= 0")
                value = float(value)
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} is a whole number >= 0")
            setattr(self, name, value)
        self.duplicate_notifications = max(1, self.duplicate_notifications)

    def take_5xx(self) -> bool:
        if self.fail_5xx > 0:
            self.fail_5xx -= 1
            return True
        return False

    def take_drop(self) -> bool:
        if self.drop_after_commit > 0:
            self.drop_after_commit -= 1
            return True
        return False


def drop_connection(request: web.Request) -> web.Response:
    """Close the connection without an answer (the work is already committed)."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=200)


Build = Callable[[], tuple[bytes, dict[str, str]]]
"""Builds one notification request (body, headers); called again for every attempt."""

Accepted = Callable[[int, bytes], bool]
"""Whether the merchant's answer (status, body) counts as "received"."""


@dataclass
class NotificationRecord:
    id: int
    order: str
    kind: str
    copies: int
    attempts: int = 0
    delivered: int = 0
    held: bool = False
    last_status: int | None = None


class Notifier:
    """Delivers notifications with a retry schedule (seconds between attempts).

    Args:
        schedule: the delays before the 2nd, 3rd ... attempts (the gateway's real schedule).
        time_factor: multiplies every delay (tests and demos compress a day into seconds).
    """

    def __init__(self, schedule: Sequence[float], time_factor: float, faults: Faults,
                 accepted: Accepted) -> None:
        self.schedule = list(schedule)
        self.time_factor = time_factor
        self.faults = faults
        self.accepted = accepted
        self.records: list[NotificationRecord] = []
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: dict[str, list[tuple[str, Build, NotificationRecord]]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    def send(self, url: str, *, order: str, kind: str, build: Build) -> NotificationRecord:
        """Queue a notification about ``order`` (``kind`` payment or refund)."""
        record = NotificationRecord(next(self._ids), order, kind,
                                    self.faults.duplicate_notifications)
        self.records.append(record)
        if kind == "payment" and self.faults.refund_before_payment:
            record.held = True
            self._held.setdefault(order, []).append((url, build, record))
            return record
        self._dispatch(url, build, record)
        if kind == "refund":
            self.release(order)
        return record

    def release(self, order: str | None = None) -> int:
        """Send held payment notices (of one order, or all); returns how many."""
        orders = [order] if order is not None else list(self._held)
        n = 0
        for key in orders:
            for url, build, record in self._held.pop(key, []):
                record.held = False
                self._dispatch(url, build, record, delay=0.05 * self.time_factor)
                n += 1
        return n

    def _dispatch(self, url: str, build: Build, record: NotificationRecord,
                  delay: float = 0.0) -> None:
        for _ in range(record.copies):
            task = asyncio.create_task(self._deliver(url, build, record, delay))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, build: Build, record: NotificationRecord,
                       delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        for wait in [0.0, *self.schedule]:
            if wait:
                await asyncio.sleep(wait * self.time_factor)
            body, headers = build()
            status, answer = await self.post(url, body, headers)
            record.attempts += 1
            record.last_status = status
            if self.accepted(status, answer):
                record.delivered += 1
                return

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """One POST to the merchant; (0, b"") when it could not be made."""
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=10)) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            return 0, b""

    async def idle(self, within: float = 10.0) -> None:
        """Wait until no delivery is in progress (tests)."""
        async with asyncio.timeout(within):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)


class Gateway(Protocol):
    """What each simulator gives the shared control endpoints."""

    async def pay_action(self, data: dict[str, Any]) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def bill_totals(self, day: dt.date) -> dict[str, Any]: ...

    def public_material(self) -> dict[str, Any]: ...

    async def crafted_notification(self, data: dict[str, Any]) -> dict[str, Any]: ...


class SimError(Exception):
    """A control request the simulator refuses (answered 400 / 404 / 409)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class SimServer:
    """One simulator's HTTP server: its gateway routes plus the control endpoints."""

    name: str
    gateway: Gateway
    faults: Faults
    notifier: Notifier
    app: web.Application = field(default_factory=lambda: web.Application(
        client_max_size=1024 * 1024))
    port: int = 0
    host: str = "127.0.0.1"
    _runner: web.AppRunner | None = None

    @classmethod
    def for_gateway(cls, name: str, gateway: Gateway, *, schedule: Sequence[float],
                    time_factor: float, accepted: Accepted) -> SimServer:
        """A server whose faults also drive its notifier (retrying on ``schedule``)."""
        faults = Faults()
        return cls(name, gateway, faults, Notifier(schedule, time_factor, faults, accepted))

    def __post_init__(self) -> None:
        r = self.app.router
        r.add_post("/_sim/faults", _control(self._faults))
        r.add_get("/_sim/faults", _control(self._faults))
        r.add_post("/_sim/pay", _control(self._pay))
        r.add_get("/_sim/stats", _control(self._stats))
        r.add_get("/_sim/bill-totals", _control(self._bill_totals))
        r.add_get("/_sim/keys", _control(self._keys))
        r.add_post("/_sim/notify", _control(self._notify))
        r.add_get("/_sim/notifications", _control(self._notifications))
        r.add_post("/_sim/release", _control(self._release))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        await self.notifier.start()
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.host = host
        self.port = self._runner.addresses[0][1]
        log.info("%s simulator on %s", self.name, self.url)
        return self.url

    async def stop(self) -> None:
        await self.notifier.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def guard(self, fail: Callable[[], Awaitable[web.Response]]) -> web.Response | None:
        """Apply latency and the 5xx fault before an API call; a response means "stop"."""
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        if self.faults.take_5xx():
            return await fail()
        return None

    # -- control endpoints (each answers what it returns as JSON; see ``_control``) ----------

    async def _faults(self, request: web.Request) -> Any:
        if request.method == "POST":
            self.faults.update(await _json_object(request))
            if not self.faults.refund_before_payment:
                self.notifier.release()
        return asdict(self.faults)

    async def _pay(self, request: web.Request) -> Any:
        return await self.gateway.pay_action(await _json_object(request))

    async def _stats(self, request: web.Request) -> Any:
        return self.gateway.stats()

    async def _bill_totals(self, request: web.Request) -> Any:
        text = request.query.get("date")
        day = dt.date.fromisoformat(text) if text else china_now().date()
        return dict(self.gateway.bill_totals(day), date=day.isoformat())

    async def _keys(self, request: web.Request) -> Any:
        return self.gateway.public_material()

    async def _notify(self, request: web.Request) -> Any:
        return await self.gateway.crafted_notification(await _json_object(request))

    async def _notifications(self, request: web.Request) -> Any:
        return [asdict(r) for r in self.notifier.records]

    async def _release(self, request: web.Request) -> Any:
        return {"released": self.notifier.release()}


def _control(endpoint: Callable[[web.Request], Awaitable[Any]]
             ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler answering ``endpoint``'s result as JSON, and a request it refuses
    (``SimError``, or ``ValueError`` for a bad value) with ``{"error": ...}``."""

    async def handle(request: web.Request) -> web.Response:
        try:
            return web.json_response(await endpoint(request))
        except SimError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    return handle


async def _json_object(request: web.Request) -> dict[str, Any]:
    """A control request's JSON object body (``SimError`` for anything else)."""
    try:
        data = await request.json()
    except ValueError:
        raise SimError("body is not JSON") from None
    if not isinstance(data, dict):
        raise SimError("body is not a JSON object")
    return data


def write_key_files(directory: Path, contents: dict[str, tuple[str, str]]) -> dict[str, Path]:
    """Write ``{name: (file name, text)}`` into ``directory``, readable by the owner only.

    Returns:
        name → the file written (what each simulator's ``write_keys`` returns).
    """
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name, (file_name, text) in contents.items():
        path = files[name] = directory / file_name
        path.write_text(text)
        path.chmod(0o600)
    return files


class Served:
    """``start``, ``stop`` and ``url`` of a gateway simulator, which its SimServer does."""

    server: SimServer

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        return await self.server.start(host, port)

    async def stop(self) -> None:
        await self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url


class Simulator(Protocol):
    """What ``serve_until_cancelled`` needs of a simulator."""

    server: SimServer

    def write_keys(self, directory: Path) -> dict[str, Path]: ...


def command_line(gateway: str, port: int) -> argparse.ArgumentParser:
    """The options every ``hisbridge simulate <gateway>`` takes; each adds its own keys."""
    parser = argparse.ArgumentParser(prog=f"hisbridge simulate {gateway}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--keys-dir", type=Path, default=Path("sim-keys"))
    parser.add_argument("--time-factor", type=float, default=1.0)
    return parser


async def serve_until_cancelled(sim: Simulator, host: str, port: int,
                                keys_dir: Path | None) -> None:
    """Write the simulator's key material to ``keys_dir`` (saying where), then serve until
    cancelled (Ctrl-C): the body of each simulator's ``serve``."""
    if keys_dir is not None:
        for name, path in sim.write_keys(keys_dir).items():
            print(f"{name}: {path}", flush=True)
    server = sim.server
    await server.start(host, port)
    print(f"{server.name} simulator listening on {server.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def run_until_interrupted(serving: Coroutine[Any, Any, None]) -> None:
    """Run a simulator's ``serve(...)`` until Ctrl-C, which ends it quietly."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serving)
