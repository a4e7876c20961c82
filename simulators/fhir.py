"""A FHIR R4 server for demos, tests and benchmarks, with switchable faults.

Stores resources in memory (create, update, read, search by identifier, transaction and
batch bundles, with conditional updates and creates by identifier) and answers errors with
OperationOutcome, like a real server. Faults are switched over HTTP
(``POST /_control/fault``) or from Python (``set_fault``):

- ``error``: answer every request with ``status`` (default 503);
- ``slow``: add ``delay`` seconds to every answer;
- ``refuse``: stop listening, so connections are refused;
- ``none``: back to normal. ``duration`` (seconds) ends any fault by itself.

Run alone: ``hisbridge simulate fhir --listen 127.0.0.1:8090``; base URL ``.../fhir``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

_FHIR_JSON = "application/fhir+json"


def _outcome(status: int, code: str, text: str) -> web.Response:
    body = {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
    return web.Response(status=status, body=orjson.dumps(body), content_type=_FHIR_JSON)


class FhirServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, base: str = "/fhir") -> None:
        self.host, self.port, self.base = host, port, base.rstrip("/")
        self.resources: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.requests = Counter[str]()
        self.message_ids: list[str] = []  # X-Message-Id of every stored write, in order
        self.arrivals: list[tuple[str, float]] = []  # (X-Message-Id, epoch seconds)
        self.fault = "none"
        self.fault_status = 503
        self.delay = 0.0
        self._fault_until = 0.0
        self._ids = itertools.count(1)
        self._by_identifier: dict[tuple[str, str, str], str] = {}
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._reopen: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.base}"

    def count(self, rtype: str | None = None) -> int:
        if rtype:
            return len(self.resources.get(rtype, {}))
        return sum(len(v) for v in self.resources.values())

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/_control/fault", self._control)
        app.router.add_get("/_control/stats", self._stats)
        app.router.add_get("/_control/arrivals", self._arrivals)
        app.router.add_route("*", self.base + "{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        server = self._site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def set_fault(self, mode: str, *, status: int = 503, delay: float = 0.0,
                        duration: float | None = None) -> None:
        if mode not in ("none", "error", "slow", "refuse"):
            raise ValueError(f"unknown fault mode {mode}")
        self.fault, self.fault_status, self.delay = mode, status, delay
        self._fault_until = time.monotonic() + duration if duration else 0.0
        if mode == "refuse" and self._site is not None:
            await self._site.stop()
            self._site = None
            if duration:
                self._reopen = asyncio.create_task(self._reopen_after(duration))
        elif mode != "refuse" and self._site is None:
            await self._listen()

    async def _reopen_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.set_fault("none")

    def _active_fault(self) -> str:
        if self._fault_until and time.monotonic() >= self._fault_until:
            self.fault, self.delay, self._fault_until = "none", 0.0, 0.0
        return self.fault

    async def _control(self, request: web.Request) -> web.Response:
        doc = await request.json()
        await self.set_fault(doc.get("mode", "none"), status=int(doc.get("status", 503)),
                             delay=float(doc.get("delay", 0)), duration=doc.get("duration"))
        return web.json_response({"fault": self.fault})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({
            "resources": {k: len(v) for k, v in self.resources.items()},
            "requests": dict(self.requests),
        })

    async def _arrivals(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.arrivals), content_type="application/json")

    async def _handle(self, request: web.Request) -> web.Response:
        fault = self._active_fault()
        self.requests[request.method] += 1
        if fault == "slow" or self.delay:
            await asyncio.sleep(self.delay)
        if fault == "error":
            return _outcome(self.fault_status, "transient", "simulated server error")
        if fault == "refuse":
            # Kept-alive connections from before the outage are cut, like a restart would.
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        parts = [p for p in request.match_info["tail"].split("/") if p]
        try:
            if request.method == "GET":
                return self._read(parts, request)
            if request.method in ("POST", "PUT"):
                body = await request.read()
                try:
                    doc = orjson.loads(body)
                except orjson.JSONDecodeError as exc:
                    return _outcome(400, "structure", f"invalid JSON: {exc}")
                if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
                    return _outcome(400, "structure", "resourceType is required")
                return self._write(request, parts, doc)
        except _Invalid as exc:
            return _outcome(exc.status, "invalid", str(exc))
        return _outcome(405, "not-supported", f"{request.method} is not supported")

    def _read(self, parts: list[str], request: web.Request) -> web.Response:
        if len(parts) == 2:
            res = self.resources.get(parts[0], {}).get(parts[1])
            if res is None:
                return _outcome(404, "not-found", f"{parts[0]}/{parts[1]} is not known")
            return web.Response(body=orjson.dumps(res), content_type=_FHIR_JSON)
        if len(parts) == 1:
            found = list(self.resources.get(parts[0], {}).values())
            ident = request.query.get("identifier")
            if ident:
                system, _, value = ident.rpartition("|")
                found = [r for r in found if any(
                    i.get("value") == value and (not system or i.get("system") == system)
                    for i in r.get("identifier", []) if isinstance(i, dict))]
            for name, value in request.query.items():
                if name not in ("identifier", "_count"):
                    found = [r for r in found if _matches_param(r, name, value)]
            bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                      "entry": [{"resource": r} for r in found]}
            return web.Response(body=orjson.dumps(bundle), content_type=_FHIR_JSON)
        return _outcome(400, "not-supported", "unsupported read")

    def _write(self, request: web.Request, parts: list[str], doc: dict[str, Any]) -> web.Response:
        # A merged transaction carries every message's id: "id1, id2, ...".
        mids = [m.strip() for m in request.headers.get("X-Message-Id", "").split(",")
                if m.strip()]
        if not parts:
            if doc["resourceType"] != "Bundle" or doc.get("type") not in ("transaction", "batch"):
                raise _Invalid("only transaction or batch Bundles may be posted to the base")
            return self._bundle(doc, mids)
        rtype = parts[0]
        if doc["resourceType"] != rtype:
            raise _Invalid(f"resourceType {doc['resourceType']} does not match the URL ({rtype})")
        rid = parts[1] if len(parts) > 1 else None
        status, stored = self._store(rtype, rid, doc)
        self._arrived(mids)
        return web.Response(status=status, body=orjson.dumps(stored), content_type=_FHIR_JSON,
                            headers={"Location": f"{self.url}/{rtype}/{stored['id']}/_history/"
                                     f"{stored['meta']['versionId']}"})

    def _store(
        self, rtype: str, rid: str | None, doc: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        _check_resource(doc)
        existing = self.resources[rtype].get(rid) if rid else None
        rid = rid or str(next(self._ids))
        version = int(existing["meta"]["versionId"]) + 1 if existing else 1
        stored = dict(doc, id=rid, meta={"versionId": str(version),
                                         "lastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
        self.resources[rtype][rid] = stored
        for ident in stored.get("identifier") or []:
            if isinstance(ident, dict) and ident.get("value"):
                self._by_identifier[(rtype, ident.get("system", ""), ident["value"])] = rid
        return (200 if existing else 201), stored

    def _match(self, rtype: str, query: str) -> str | None:
        """The id a conditional update or create targets (only ``identifier=system|value``
        searches). The query is URL-decoded first: clients percent-encode search values
        (the mapping engine does), and ``%7C`` is the same ``|``."""
        params = dict(parse_qsl(query, keep_blank_values=True))
        ident = params.get("identifier")
        if ident is None:
            raise _Invalid(f"unsupported conditional search {query!r}", 412)
        system, _, value = ident.rpartition("|")
        return self._by_identifier.get((rtype, system, value))

    def _arrived(self, message_ids: list[str]) -> None:
        now = time.time()
        self.message_ids.extend(message_ids)
        self.arrivals.extend((mid, now) for mid in message_ids)

    def _bundle(self, doc: dict[str, Any], mids: list[str]) -> web.Response:
        entries = doc.get("entry") or []
        transaction = doc.get("type") == "transaction"
        # First resolve every entry's target id, so urn:uuid references can be rewritten.
        staged: list[tuple[str, str | None, dict[str, Any]] | _Exists | _Invalid] = []
        full_urls: dict[str, str] = {}
        for n, entry in enumerate(entries):
            try:
                res = entry.get("resource") if isinstance(entry, dict) else None
                req = entry.get("request") if isinstance(entry, dict) else None
                if not isinstance(res, dict) or not isinstance(req, dict):
                    raise _Invalid(f"entry {n} needs resource and request")
                url = str(req.get("url", ""))
                rtype, sep, rest = url.partition("?")
                target: str | None = None
                existing: str | None = None
                if sep:
                    target = self._match(rtype, rest) or str(next(self._ids))
                elif req.get("method") == "POST" and req.get("ifNoneExist"):
                    # Conditional create: nothing is written when the search finds one.
                    existing = self._match(rtype, str(req["ifNoneExist"]))
                    target = existing or str(next(self._ids))
                else:
                    rtype, _, target_part = url.partition("/")
                    target = target_part or (str(next(self._ids))
                                              if req.get("method") == "POST" else None)
                if res.get("resourceType") != rtype:
                    raise _Invalid(f"entry {n}: resourceType does not match request.url")
                _check_resource(res)
                if isinstance(entry.get("fullUrl"), str) and target:
                    full_urls[entry["fullUrl"]] = f"{rtype}/{target}"
                staged.append(_Exists(rtype, existing) if existing else (rtype, target, res))
            except _Invalid as exc:
                if transaction:
                    raise
                staged.append(exc)
        results: list[dict[str, Any]] = []
        for item in staged:
            if isinstance(item, _Invalid):
                results.append({"response": {
                    "status": f"{item.status} Bad Request",
                    "outcome": {"resourceType": "OperationOutcome", "issue": [
                        {"severity": "error", "code": "invalid", "diagnostics": str(item)}]}}})
                continue
            if isinstance(item, _Exists):
                found = self.resources[item.rtype][item.rid]
                results.append({"response": {
                    "status": "200 OK",
                    "location": f"{item.rtype}/{item.rid}/_history/"
                                f"{found['meta']['versionId']}"}})
                continue
            rtype, target, res = item
            status, stored = self._store(rtype, target, _resolve_refs(res, full_urls))
            results.append({"response": {
                "status": f"{status} {'Created' if status == 201 else 'OK'}",
                "location": f"{rtype}/{stored['id']}/_history/{stored['meta']['versionId']}"}})
        self._arrived(mids)
        reply = {"resourceType": "Bundle", "type": f"{doc.get('type')}-response", "entry": results}
        return web.Response(body=orjson.dumps(reply), content_type=_FHIR_JSON)


def _matches_param(resource: dict[str, Any], name: str, value: str) -> bool:
    """Reference search parameters such as ``subject=Patient/1`` or ``patient=1``."""
    field = "subject" if name in ("patient", "subject") else name
    ref = resource.get(field)
    if isinstance(ref, dict):
        target = str(ref.get("reference", ""))
        return target == value or target.endswith(f"/{value}")
    return str(ref) == value


_REFERENCE = re.compile(rb'"reference":("(?:[^"\\]|\\.)*")')


def _resolve_refs(resource: dict[str, Any], full_urls: dict[str, str]) -> dict[str, Any]:
    """Replace references to bundle entries (``urn:uuid:...``) by the entries' ``Type/id``.

    Done on the serialized resource: orjson writes every ``"reference":"..."`` pair in one
    form, and a scan of those bytes costs a fraction of walking the resource in Python.
    """
    if not full_urls:
        return resource
    raw = orjson.dumps(resource)
    if b'"reference":' not in raw:
        return resource
    changed = False

    def swap(m: re.Match[bytes]) -> bytes:
        nonlocal changed
        target = full_urls.get(orjson.loads(m.group(1)))
        if target is None:
            return m.group(0)
        changed = True
        return b'"reference":' + orjson.dumps(target)

    raw = _REFERENCE.sub(swap, raw)
    return orjson.loads(raw) if changed else resource


@dataclass(frozen=True, slots=True)
class _Exists:
    """A conditional create whose resource is already there."""

    rtype: str
    rid: str


class _Invalid(Exception):
    def __init__(self, text: str, status: int = 400) -> None:
        super().__init__(text)
        self.status = status


def _check_resource(doc: dict[str, Any]) -> None:
    """The structural checks a strict server applies before storing."""
    ids = doc.get("identifier")
    if ids is not None and not isinstance(ids, list):
        raise _Invalid(f"{doc.get('resourceType')}.identifier must be an array", 422)


async def _main(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    server = FhirServer(host, int(port))
    await server.start()
    print(f"FHIR server at {server.url} (faults: POST http://{host}:{server.port}/_control/fault)")
    try:
        while True:
            await asyncio.sleep(5)
            print(f"stored {server.count()} resources")
    finally:
        await server.stop()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="127.0.0.1:8090")


def main(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))
