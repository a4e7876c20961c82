"""The admin API on its own port: health, metrics, messages, dead letters, replay.

Every endpoint except ``/health/live`` and the static dashboard shell (which holds no data)
requires ``Authorization: Bearer <token>``. The token is checked in a middleware, before any
handler runs, so a request without it never has its body read. Actions that change state
(replay, requeue) are audited in the store and logged with the caller's address.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import math
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from engine.database import StoreUnavailable, apply_schema
from engine.errors import TransientError
from engine.settings import split_host_port

if TYPE_CHECKING:
    from engine.runtime import Engine

log = logging.getLogger(__name__)

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id     INTEGER PRIMARY KEY,
    at     REAL NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    remote TEXT,
    detail TEXT
)
"""

_CSP = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
_OPEN_PATHS = frozenset({"/health/live", "/", "/dashboard"})
_ENGINE: web.AppKey[Engine] = web.AppKey("engine")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


_MAX_LIMIT = 1000


def _limit(value: str | None) -> int:
    """The search's page size: a whole number from 1 to 1000 (50 when not given)."""
    if value is None:
        return 50
    text = value.strip()
    number = int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else 0
    if not 1 <= number <= _MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {_MAX_LIMIT}, "
                         f"got {value[:40]!r}")
    return number


def _moment(query: Any, name: str) -> float | None:
    """A time bound as epoch seconds, given as epoch seconds or an ISO 8601 date or time
    (a time without an offset is the engine's local time)."""
    value = query.get(name)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = dt.datetime.fromisoformat(value.strip()).timestamp()
        except (ValueError, OverflowError, OSError):
            seconds = math.nan
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be epoch seconds or an ISO 8601 date or time, "
                         f"got {value[:40]!r}")
    return seconds


class AdminServer:
    def __init__(self, engine: Engine, token: str) -> None:
        self.engine = engine
        self.token = token.encode()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, listen: str) -> None:
        await self.engine.db.write(lambda c: apply_schema(c, AUDIT_SCHEMA))
        app = web.Application(middlewares=[self._auth], client_max_size=1024 * 1024)
        app[_ENGINE] = self.engine
        app.router.add_get("/health/live", self.live)
        app.router.add_get("/health/ready", self.ready)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/channels", self.channels)
        app.router.add_get("/api/messages", self.messages)
        app.router.add_get("/api/messages/{id}", self.message)
        app.router.add_post("/api/messages/{id}/replay", self.replay)
        app.router.add_get("/api/dead-letters", self.dead_letters)
        app.router.add_post("/api/dead-letters/requeue", self.requeue)
        app.router.add_get("/api/audit", self.audit_log)
        app.router.add_get("/", self.dashboard)
        app.router.add_get("/dashboard", self.dashboard)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        host, port = split_host_port(listen)
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("admin listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in _OPEN_PATHS:
            header = request.headers.get("Authorization", "")
            # surrogateescape: a header with bytes that are not UTF-8 is just a wrong token.
            supplied = header.removeprefix("Bearer ").strip().encode("utf-8", "surrogateescape")
            if not header.startswith("Bearer ") or not hmac.compare_digest(supplied, self.token):
                # Close the connection rather than drain an unread (possibly huge) body.
                return web.json_response(
                    {"error": "missing or wrong admin token"}, status=401,
                    headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
                )
        response: web.StreamResponse = await handler(request)
        return response

    async def _audit(self, request: web.Request, action: str, target: str, detail: str) -> None:
        remote = request.remote or ""
        now = time.time()
        await self.engine.db.write(lambda c: c.execute(
            "INSERT INTO audit (at, action, target, remote, detail) VALUES (?, ?, ?, ?, ?)",
            (now, action, target, remote, detail),
        ))
        log.info("admin %s %s from %s: %s", action, target, remote, detail)

    # -- handlers ----------------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "uptime": round(time.time() - self.engine.started_at, 1)})

    async def ready(self, request: web.Request) -> web.Response:
        report = await self.engine.readiness()
        return _json(report, status=200 if report["status"] == "ok" else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.engine.metrics.render(),
                            content_type="text/plain", charset="utf-8")

    async def channels(self, request: web.Request) -> web.Response:
        out = []
        backend = self.engine.backend
        for name, rt in self.engine.channels.items():
            metrics = self.engine.metrics
            out.append({
                "name": name,
                "source": rt.config.source.type,
                "port": self.engine.source_port(name),
                "depth": await backend.depth(rt.worker.queue),
                # What the source heard since start; key_reused means a sender reuses
                # control ids and is being refused (AR 205) until that is fixed.
                "counts": {
                    "received": int(metrics.received.get(channel=name)),
                    "duplicates": int(metrics.duplicates.get(channel=name)),
                    "refused": int(metrics.refused.get(channel=name)),
                    "key_reused": int(metrics.key_reused.get(channel=name)),
                },
                "destinations": [
                    {
                        "name": d.name, "type": dcfg.type, "queue": d.queue,
                        "state": d.health.state, "depth": await backend.depth(d.queue),
                        "consecutive_failures": d.health.consecutive_failures,
                        "last_error": d.health.last_error,
                    }
                    for d, dcfg in zip(rt.destinations, rt.config.destinations, strict=True)
                ],
            })
        return _json({"channels": out})

    async def messages(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = _limit(q.get("limit"))
            since = _moment(q, "since")
            until = _moment(q, "until")
        except ValueError as exc:
            return _json({"error": str(exc)}, status=400)
        found = await self.engine.store.search(
            channel=q.get("channel"), status=q.get("status"), control_id=q.get("control_id"),
            message_type=q.get("type"), text=q.get("text"), since=since, until=until,
            before_id=q.get("before"), limit=limit,
        )
        return _json({"messages": [
            {
                "id": m.id, "channel": m.channel, "content_type": m.content_type,
                "message_type": m.message_type, "control_id": m.control_id,
                "received_at": m.received_at, "status": m.status,
            }
            for m in found
        ]})

    async def message(self, request: web.Request) -> web.Response:
        mid = request.match_info["id"]
        m = await self.engine.store.get(mid)
        if m is None:
            return _json({"error": f"no message {mid}"}, status=404)
        events = await self.engine.store.events(mid)
        return _json({
            "id": m.id, "channel": m.channel, "content_type": m.content_type,
            "message_type": m.message_type, "control_id": m.control_id,
            "dedup_key": m.dedup_key, "correlation_id": m.correlation_id,
            "received_at": m.received_at, "status": m.status, "headers": dict(m.headers),
            "body": m.body.decode("utf-8", errors="replace"),
            "mapped": m.mapped.decode("utf-8", errors="replace") if m.mapped else None,
            "mapped_type": m.mapped_type,
            "events": [
                {"at": e.at, "status": e.status, "destination": e.destination,
                 "attempt": e.attempt, "detail": e.detail}
                for e in events
            ],
        })

    async def replay(self, request: web.Request) -> web.Response:
        mid = request.match_info["id"]
        try:
            new_id = await self.engine.replay(mid)
        except KeyError as exc:
            return _json({"error": f"cannot replay: {exc.args[0]}"}, status=404)
        except (TransientError, StoreUnavailable) as exc:
            return web.json_response({"error": f"cannot replay {mid} now: {exc}"[:500]},
                                     status=503, headers={"Retry-After": "5"})
        await self._audit(request, "replay", mid, f"as {new_id}")
        return _json({"replayed": mid, "message_id": new_id}, status=202)

    async def dead_letters(self, request: web.Request) -> web.Response:
        queue = request.query.get("queue")
        if queue and queue not in self._queues():
            return _json({"error": f"unknown queue {queue[:200]!r}"}, status=404)
        queues = [queue] if queue else self._queues()
        out = []
        for qname in queues:
            for dl in await self.engine.backend.dead_letters(qname, limit=200):
                out.append({
                    "queue": dl.queue, "id": dl.id, "message_id": dl.envelope.message_id,
                    "reason": dl.reason, "failures": dl.failures,
                    "first_failed_at": dl.first_failed_at, "dead_at": dl.dead_at,
                })
        return _json({"dead_letters": out})

    async def requeue(self, request: web.Request) -> web.Response:
        try:
            doc = orjson.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return _json({"error": f"body exceeds {request.client_max_size} bytes"}, status=413)
        except orjson.JSONDecodeError:
            return _json({"error": "body must be JSON: {\"queue\": ..., \"ids\": [...]}"}, 400)
        if not isinstance(doc, dict):
            return _json({"error": "body must be a JSON object: {\"queue\": ..., \"ids\": [...]}"},
                         status=400)
        if not isinstance(doc.get("queue"), str):
            word = "is required" if doc.get("queue") is None else "must be a string"
            return _json({"error": f"queue {word}"}, status=400)
        queue = doc["queue"]
        if queue not in self._queues():
            return _json({"error": f"unknown queue {queue}"}, status=404)
        ids = doc.get("ids")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            return _json({"error": "ids must be a list of strings"}, status=400)
        count = await self.engine.backend.requeue(queue, ids)
        await self._audit(request, "requeue", queue, f"{count} dead letter(s)")
        return _json({"queue": queue, "requeued": count})

    async def audit_log(self, request: web.Request) -> web.Response:
        rows = await self.engine.db.read(lambda c: c.execute(
            "SELECT at, action, target, remote, detail FROM audit ORDER BY id DESC LIMIT 200"
        ).fetchall())
        return _json({"audit": [
            dict(zip(("at", "action", "target", "remote", "detail"), r, strict=True))
            for r in rows
        ]})

    async def dashboard(self, request: web.Request) -> web.Response:
        html = resources.files("engine").joinpath("static/dashboard.html").read_text("utf-8")
        return web.Response(text=html, content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": _CSP})

    def _queues(self) -> list[str]:
        out = []
        for rt in self.engine.channels.values():
            out.append(rt.worker.queue)
            out.extend(d.queue for d in rt.destinations)
        return out
