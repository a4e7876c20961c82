"""The admin API: token before body, health, metrics, search, dead letters, replay, audit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from engine.runtime import Engine
from simulators.his import HisReceiver
from simulators.hl7_messages import adt
from simulators.patients import PatientFactory
from tests.conftest import engine_config, wait_for
from tests.mllp_client import MllpClient


@pytest.fixture
async def setup(tmp_path: Path, engines: list[Engine],
                monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, HisReceiver, str]:
    monkeypatch.setenv("HB_ADMIN", "admin-secret")
    receiver = HisReceiver()
    await receiver.start()
    config = engine_config(tmp_path, f"""
        [[channels]]
        name = "his"
        source = {{ type = "mllp", listen = "127.0.0.1:0" }}
        [[channels.destinations]]
        name = "cdr"
        type = "mllp"
        host = "127.0.0.1"
        port = {receiver.port}
        retry = {{ max_attempts = 1 }}
    """, admin=True, admin_token="${HB_ADMIN}")
    engine = Engine(config)
    await engine.start()
    engines.append(engine)
    yield engine, receiver, f"http://127.0.0.1:{engine.admin.port}"  # type: ignore[misc]
    await receiver.stop()


AUTH = {"Authorization": "Bearer admin-secret"}


async def test_liveness_is_open_everything_else_needs_the_token(
    setup: tuple[Engine, HisReceiver, str]
) -> None:
    _, _, base = setup
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/health/live") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        for path in ("/health/ready", "/metrics", "/api/channels", "/api/messages",
                     "/api/dead-letters", "/api/audit"):
            async with s.get(base + path) as r:
                assert r.status == 401, path
            async with s.get(base + path, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401, path
        async with s.get(f"{base}/health/ready", headers=AUTH) as r:
            report = await r.json()
            assert r.status == 200
            assert report["checks"]["store"] == "ok" and report["checks"]["queue"] == "ok"
            assert report["checks"]["destinations"]["his/cdr"]["state"] == "ok"


async def test_token_is_checked_before_the_body_is_read(
    setup: tuple[Engine, HisReceiver, str]
) -> None:
    _, _, base = setup
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    # Announce 50 MB and send none of it: the answer must not wait for the body.
    writer.write(b"POST /api/dead-letters/requeue HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer wrong\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 52428800\r\n\r\n")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 2.0)
    assert b" 401 " in status_line
    writer.close()


async def test_search_view_dead_letters_requeue_replay_and_audit(
    setup: tuple[Engine, HisReceiver, str]
) -> None:
    engine, receiver, base = setup
    f = PatientFactory(seed=3)
    client = await MllpClient.connect(engine.source_port("his"))
    receiver.mode = "AR"
    assert (await client.send(adt("A04", f.patient(), f.visit(), cid="ADM-1"))).get(
        "MSA", 1) == "AA"
    await wait_for(lambda: engine.metrics.dead_lettered.total() == 1)
    async with aiohttp.ClientSession(headers=AUTH) as s:
        async with s.get(f"{base}/api/messages", params={"control_id": "ADM-1"}) as r:
            found = (await r.json())["messages"]
        assert len(found) == 1 and found[0]["status"] == "dead_lettered"
        mid = found[0]["id"]
        async with s.get(f"{base}/api/messages/{mid}") as r:
            detail = await r.json()
        assert detail["body"].startswith("MSH|") and detail["message_type"] == "ADT^A04"
        assert [e["status"] for e in detail["events"]][-1] == "dead_lettered"
        async with s.get(f"{base}/api/dead-letters") as r:
            dead = (await r.json())["dead_letters"]
        assert len(dead) == 1 and "peer answered AR" in dead[0]["reason"]
        receiver.mode = "AA"
        async with s.post(f"{base}/api/dead-letters/requeue",
                          json={"queue": dead[0]["queue"], "ids": [dead[0]["id"]]}) as r:
            assert (await r.json())["requeued"] == 1
        await wait_for(lambda: receiver.received == ["ADM-1"])
        async with s.post(f"{base}/api/messages/{mid}/replay") as r:
            assert r.status == 202
            replayed = (await r.json())["message_id"]
        assert replayed != mid
        await wait_for(lambda: receiver.received == ["ADM-1", "ADM-1"])
        async with s.post(f"{base}/api/messages/NOPE/replay") as r:
            assert r.status == 404
        async with s.post(f"{base}/api/dead-letters/requeue", data=b"[") as r:
            assert r.status == 400
        async with s.get(f"{base}/api/audit") as r:
            actions = [(a["action"], a["target"]) for a in (await r.json())["audit"]]
        assert ("replay", mid) in actions and ("requeue", dead[0]["queue"]) in actions
        # The peer has both copies; the engine counts each once it has settled it.
        await wait_for(lambda: engine.metrics.sent.total() == 2)
        async with s.get(f"{base}/metrics") as r:
            text = await r.text()
        assert 'hisbridge_deliveries_dead_lettered_total{channel="his",destination="cdr"} 1' in text
        assert 'hisbridge_deliveries_sent_total{channel="his",destination="cdr"} 2' in text
        assert "hisbridge_ingest_seconds_bucket" in text
        async with s.get(f"{base}/api/channels") as r:
            channels = (await r.json())["channels"]
        assert channels[0]["destinations"][0]["name"] == "cdr"
        assert channels[0]["counts"] == {"received": engine.metrics.received.total(),
                                         "duplicates": 0, "refused": 0, "key_reused": 0}
        assert channels[0]["counts"]["received"] >= 1
    await client.close()


async def test_requeue_of_unknown_or_malformed_ids_requeues_nothing(
    setup: tuple[Engine, HisReceiver, str]
) -> None:
    engine, _, base = setup
    queue = engine.channels["his"].destinations[0].queue
    async with aiohttp.ClientSession(headers=AUTH) as s:
        async with s.post(f"{base}/api/dead-letters/requeue",
                          json={"queue": queue, "ids": ["not-a-number", "999999"]}) as r:
            assert r.status == 200
            assert (await r.json())["requeued"] == 0
        async with s.post(f"{base}/api/dead-letters/requeue",
                          json={"queue": "dest:nope/none"}) as r:
            assert r.status == 404
        async with s.post(f"{base}/api/dead-letters/requeue",
                          json={"queue": queue, "ids": [1, 2]}) as r:
            assert r.status == 400
