"""HTTP source and destination, and the FHIR destination against the FHIR simulator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from engine.runtime import Engine
from simulators.fhir import FhirServer
from tests.conftest import engine_config, wait_for


class Peer:
    """A real HTTP server answering with a programmable list of statuses."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.headers: dict[str, str] = {}
        self.bodies: list[bytes] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text=f"status {status}", headers=self.headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/in", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def peer() -> Peer:
    p = Peer()
    await p.start()
    yield p  # type: ignore[misc]
    await p.stop()


def http_channel(dest: str, *, token: str = "", extra: str = "") -> str:
    tok = f', token = "{token}"' if token else ""
    source = 'type = "http", listen = "127.0.0.1:0", path = "/in", max_body_bytes = 4096'
    return f"""
        [[channels]]
        name = "api"
        source = {{ {source}{tok} }}
        {extra}
        [[channels.destinations]]
        {dest}
    """


async def start(tmp_path: Path, engines: list[Engine], body: str) -> tuple[Engine, str]:
    engine = Engine(engine_config(tmp_path, body))
    await engine.start()
    engines.append(engine)
    return engine, f"http://127.0.0.1:{engine.source_port('api')}/in"


async def test_http_source_answers_after_commit_and_validates(
    tmp_path: Path, engines: list[Engine], peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HB_SOURCE_TOKEN", "t0k")
    dest = f'name = "out"\ntype = "http"\nurl = "http://127.0.0.1:{peer.port}/in"'
    engine, url = await start(tmp_path, engines, http_channel(dest, token="${HB_SOURCE_TOKEN}"))
    auth = {"Authorization": "Bearer t0k"}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json={"a": 1}) as r:
            assert r.status == 401
        headers = {**auth, "Idempotency-Key": "order-1"}
        async with s.post(url, json={"a": 1}, headers=headers) as r:
            assert r.status == 202
            first = await r.json()
        assert (await engine.store.get(first["message_id"])) is not None
        async with s.post(url, json={"a": 1}, headers=headers) as r:
            assert r.status == 200
            assert await r.json() == {"message_id": first["message_id"], "duplicate": True}
        async with s.post(url, data=b"{not json", headers={
                **auth, "Content-Type": "application/json"}) as r:
            assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
        async with s.post(url, data=b"x" * 5000, headers={
                **auth, "Content-Type": "application/json"}) as r:
            assert r.status == 413
        async with s.post(url, data=b"\x00\x01", headers={
                **auth, "Content-Type": "application/octet-stream"}) as r:
            assert r.status == 415
        xxe = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>'
        async with s.post(url, data=xxe, headers={**auth, "Content-Type": "application/xml"}) as r:
            assert r.status == 400 and "DOCTYPE" in (await r.json())["error"]
        hl7 = b"MSH|^~\\&|HIS|F|||20260101||ADT^A04|HTTP-1|P|2.5\rPID|1\r"
        async with s.post(url, data=hl7, headers={
                **auth, "Content-Type": "x-application/hl7-v2+er7"}) as r:
            assert r.status == 200
            assert b"MSA|AA|HTTP-1" in await r.read()
        hl7_headers = {**auth, "Content-Type": "x-application/hl7-v2+er7"}
        async with s.post(url, data=hl7, headers=hl7_headers) as r:  # a resend
            assert r.status == 200 and b"MSA|AA|HTTP-1" in await r.read()
        reused = hl7.replace(b"PID|1", b"PID|2")  # another message, the same control id
        async with s.post(url, data=reused, headers=hl7_headers) as r:
            assert r.status == 409
            answer = await r.read()
            assert b"MSA|AR|HTTP-1|" in answer and b"|205^" in answer
        async with s.get(url.replace("/in", "/nowhere"), headers=auth) as r:
            assert r.status == 404
    await wait_for(lambda: len(peer.bodies) == 2)
    assert orjson.loads(peer.bodies[0]) == {"a": 1}
    assert engine.metrics.received.total() == 2 and engine.metrics.duplicates.total() == 2
    assert engine.metrics.key_reused.total() == 1


async def test_http_destination_classifies_statuses(
    tmp_path: Path, engines: list[Engine], peer: Peer
) -> None:
    dest = (f'name = "out"\ntype = "http"\nurl = "http://127.0.0.1:{peer.port}/in"\n'
            'ordered = true\noutcomes = { "409" = "ack", "404" = "retry" }')
    engine, url = await start(tmp_path, engines, http_channel(dest))
    peer.statuses = [500, 503, 429, 404, 200,  # message 1: four retryable answers, then OK
                     400,  # message 2: client error, dead letter
                     409]  # message 3: declared success
    async with aiohttp.ClientSession() as s:
        for n in range(3):
            async with s.post(url, json={"n": n}) as r:
                assert r.status == 202
    await wait_for(lambda: engine.metrics.sent.total() == 2)
    await wait_for(lambda: engine.metrics.dead_lettered.total() == 1)
    assert engine.metrics.retried.total() == 4
    dead = await engine.backend.dead_letters(engine.channels["api"].destinations[0].queue)
    assert len(dead) == 1 and "answered 400: status 400" in dead[0].reason
    assert orjson.loads(dead[0].envelope.body) == {"n": 1}


async def test_full_engine_answers_503_with_retry_after(
    tmp_path: Path, engines: list[Engine], peer: Peer
) -> None:
    dest = f'name = "out"\ntype = "http"\nurl = "http://127.0.0.1:{peer.port}/in"'
    config = engine_config(tmp_path, http_channel(dest))
    engine = Engine(config.model_copy(update={
        "queue": config.queue.model_copy(update={"max_depth": 0})}))
    await engine.start()
    engines.append(engine)
    url = f"http://127.0.0.1:{engine.source_port('api')}/in"
    async with aiohttp.ClientSession() as s, s.post(url, json={"a": 1}) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "5"
    assert (await engine.store.search()) == []


async def test_fhir_destination_creates_updates_and_posts_bundles(
    tmp_path: Path, engines: list[Engine], fhir: FhirServer
) -> None:
    dest = f'name = "fhir"\ntype = "fhir"\nbase_url = "{fhir.url}"'
    engine, url = await start(tmp_path, engines, http_channel(dest).replace(
        "max_body_bytes = 4096", "max_body_bytes = 65536"))
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "M1"}],
               "name": [{"text": "张三"}]}
    update = dict(patient, id="p-7")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Encounter", "status": "finished"},
         "request": {"method": "POST", "url": "Encounter"}},
    ]}
    async with aiohttp.ClientSession() as s:
        for doc in (patient, update, bundle):
            async with s.post(url, data=orjson.dumps(doc),
                               headers={"Content-Type": "application/fhir+json"}) as r:
                assert r.status == 202
    await wait_for(lambda: engine.metrics.sent.total() == 3)
    assert fhir.count("Patient") == 3 and fhir.count("Encounter") == 1
    assert fhir.resources["Patient"]["p-7"]["name"] == [{"text": "张三"}]


async def test_fhir_operation_outcome_is_permanent_and_outage_is_retried(
    tmp_path: Path, engines: list[Engine], fhir: FhirServer
) -> None:
    dest = (f'name = "fhir"\ntype = "fhir"\nbase_url = "{fhir.url}"\nordered = true\n'
            'retry = { max_attempts = 100, initial_delay = 0.05, max_delay = 0.2 }')
    engine, url = await start(tmp_path, engines, http_channel(dest))
    async with aiohttp.ClientSession() as s:
        bad = {"resourceType": "Patient", "identifier": "not-a-list"}
        async with s.post(url, data=orjson.dumps(bad),
                           headers={"Content-Type": "application/fhir+json"}) as r:
            assert r.status == 202
        await wait_for(lambda: engine.metrics.dead_lettered.total() == 1)
        dead = await engine.backend.dead_letters(engine.channels["api"].destinations[0].queue)
        assert "OperationOutcome: error invalid: Patient.identifier must be an array" in (
            dead[0].reason)
        await fhir.set_fault("error", status=503)
        good = {"resourceType": "Patient", "id": "ok-1"}
        async with s.post(url, data=orjson.dumps(good),
                           headers={"Content-Type": "application/fhir+json"}) as r:
            assert r.status == 202
        await wait_for(lambda: engine.metrics.retried.total() >= 2)
        await fhir.set_fault("refuse")
        await wait_for(lambda: engine.metrics.retried.total() >= 4)
        assert engine.channels["api"].destinations[0].health.state in ("retrying", "failing")
        await fhir.set_fault("none")
        await wait_for(lambda: "ok-1" in fhir.resources.get("Patient", {}), timeout=10)
        await wait_for(lambda: engine.channels["api"].destinations[0].health.state == "ok")


async def test_pending_retry_survives_restart(tmp_path: Path, engines: list[Engine],
                                              peer: Peer) -> None:
    dest = (f'name = "out"\ntype = "http"\nurl = "http://127.0.0.1:{peer.port}/in"\n'
            'retry = { initial_delay = 1.5, max_delay = 1.5, max_attempts = 5 }')
    engine, url = await start(tmp_path, engines, http_channel(dest))
    peer.statuses = [503]
    async with aiohttp.ClientSession() as s, s.post(url, json={"restart": True}) as r:
        mid = (await r.json())["message_id"]
    await wait_for(lambda: engine.metrics.retried.total() == 1)
    await engine.stop()
    engine2 = Engine(engine.config)
    await engine2.start()
    engines.append(engine2)
    await asyncio.sleep(0.5)
    assert len(peer.bodies) == 1  # the delay is honoured after the restart too
    await wait_for(lambda: len(peer.bodies) == 2, timeout=5)
    await wait_for(lambda: engine2.metrics.sent.total() == 1)
    events = await engine2.store.events(mid)
    assert [(e.status, e.attempt) for e in events if e.destination] == [
        ("retrying", 1), ("sent", 2)]
