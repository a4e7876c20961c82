"""What the demo's settle channel relies on in the HTTP adapter and the config loader:
``pass_headers`` (request headers onto the message, and on with the answer through
``response_to``), bearer tokens that are not there yet (a fresh machine), and relative
``file:`` secrets read from beside the config file. Real engines, real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from engine.config import load_config
from engine.errors import ConfigError
from engine.runtime import Engine
from tests.conftest import engine_config, wait_for


class Peer:
    """An HTTP peer that answers JSON and records the requests it got."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def take(request: web.Request) -> web.Response:
            self.requests.append((request.path, dict(request.headers), await request.read()))
            return web.json_response({"setl_id": "S1", "amount": "12.30"})

        app = web.Application()
        app.router.add_post("/{tail:.*}", take)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    await p.start()
    yield p
    await p.stop()


async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.post(url, data=body,
                                                          headers=headers) as r:
        return r.status, dict(r.headers)


async def test_passed_headers_reach_the_message_and_travel_with_the_answer(
        tmp_path: Path, engines: list[Engine], peer: Peer) -> None:
    engine = Engine(engine_config(tmp_path, f"""
        [[channels]]
        name = "settle"
        [channels.source]
        type = "http"
        listen = "127.0.0.1:0"
        path = "/claims"
        pass_headers = ["mdtrt_cert_no", "Claim-Reference", "chrg_bchno"]

        [[channels.destinations]]
        name = "insurer"
        type = "http"
        url = "http://127.0.0.1:{peer.port}/settle"
        response_to = "settled"

        [[channels]]
        name = "settled"
        source = {{ type = "internal" }}
        [[channels.destinations]]
        name = "his"
        type = "http"
        url = "http://127.0.0.1:{peer.port}/his"
    """))
    await engine.start()
    engines.append(engine)
    url = f"http://127.0.0.1:{engine.source_port('settle')}/claims"
    status, _ = await post(url, b'{"n": 1}', {
        "Content-Type": "application/json", "MDTRT_CERT_NO": "D44039900001",
        "claim-reference": "Claim/settle-1", "X-Not-Listed": "dropped"})
    assert status == 202
    await wait_for(lambda: len(peer.requests) == 2)

    [request] = await engine.store.search(channel="settle")
    # Stored under the names as configured, whatever case the client used; absent and
    # unlisted headers are not copied.
    assert dict(request.headers) == {"mdtrt_cert_no": "D44039900001",
                                     "Claim-Reference": "Claim/settle-1"}
    [answer] = await engine.store.search(channel="settled")
    assert answer.headers["mdtrt_cert_no"] == "D44039900001"
    assert answer.headers["Claim-Reference"] == "Claim/settle-1"
    assert answer.headers["in-reply-to"] == request.id


@pytest.mark.parametrize(("names", "problem"), [
    ('["mdtrt cert no"]', "is not an HTTP header name"),
    ('["Idempotency-Key"]', "is set by the engine itself"),
    ('["chrg_bchno", "CHRG_BCHNO"]', "header names listed twice: chrg_bchno"),
])
def test_pass_headers_are_checked_when_the_config_loads(
        tmp_path: Path, names: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as err:
        engine_config(tmp_path, f"""
            [[channels]]
            name = "settle"
            source = {{ type = "http", listen = "127.0.0.1:0", pass_headers = {names} }}
            [[channels.destinations]]
            name = "x"
            type = "http"
            url = "http://127.0.0.1:1/"
        """)
    assert "channels[0].source.pass_headers" in str(err.value)


async def test_a_destination_token_not_there_yet_retries_until_it_is(
        tmp_path: Path, engines: list[Engine], peer: Peer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HB_DEMO_DEST_TOKEN", raising=False)
    engine = Engine(engine_config(tmp_path, f"""
        [[channels]]
        name = "in"
        source = {{ type = "http", listen = "127.0.0.1:0", path = "/in" }}
        [[channels.destinations]]
        name = "out"
        type = "http"
        url = "http://127.0.0.1:{peer.port}/out"
        token = "${{HB_DEMO_DEST_TOKEN}}"
        retry = {{ max_attempts = 50, initial_delay = 0.05, max_delay = 0.1 }}
    """))
    await engine.start()  # a missing secret does not stop the engine
    engines.append(engine)
    status, _ = await post(f"http://127.0.0.1:{engine.source_port('in')}/in", b'{"n": 2}',
                           {"Content-Type": "application/json"})
    assert status == 202
    labels = {"channel": "in", "destination": "out"}
    await wait_for(lambda: engine.metrics.retried.get(**labels) >= 2)
    assert peer.requests == []  # nothing was sent without the token
    [message] = await engine.store.search(channel="in")
    events = await engine.store.events(message.id)
    assert any("token not available" in (e.detail or "") and "HB_DEMO_DEST_TOKEN" in
               (e.detail or "") for e in events), events

    monkeypatch.setenv("HB_DEMO_DEST_TOKEN", "t0ken-for-the-test")
    await wait_for(lambda: engine.metrics.sent.get(**labels) == 1)
    assert [h["Authorization"] for _, h, _ in peer.requests] == ["Bearer t0ken-for-the-test"]
    assert engine.metrics.dead_lettered.get(**labels) == 0


async def test_a_source_token_not_there_yet_answers_503(
        tmp_path: Path, engines: list[Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HB_DEMO_SOURCE_TOKEN", raising=False)
    engine = Engine(engine_config(tmp_path, """
        [[channels]]
        name = "in"
        [channels.source]
        type = "http"
        listen = "127.0.0.1:0"
        path = "/in"
        token = "${HB_DEMO_SOURCE_TOKEN}"

        [[channels.destinations]]
        name = "out"
        type = "http"
        url = "http://127.0.0.1:1/out"
    """))
    await engine.start()
    engines.append(engine)
    url = f"http://127.0.0.1:{engine.source_port('in')}/in"
    json_type = {"Content-Type": "application/json"}
    status, headers = await post(url, b"{}", {**json_type, "Authorization": "Bearer x"})
    assert (status, headers.get("Retry-After")) == (503, "30")
    monkeypatch.setenv("HB_DEMO_SOURCE_TOKEN", "s3cret")
    assert (await post(url, b"{}", {**json_type, "Authorization": "Bearer x"}))[0] == 401
    assert (await post(url, b"{}", {**json_type, "Authorization": "Bearer s3cret"}))[0] == 202
    assert engine.metrics.received.get(channel="in") == 1


def test_relative_file_secrets_are_read_beside_the_config_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    (site / "secrets").mkdir(parents=True)
    (site / "secrets" / "his.token").write_text("from-beside-the-config\n")
    (site / "config.toml").write_text("""
[[channels]]
name = "in"
source = { type = "http", listen = "127.0.0.1:0" }
[[channels.destinations]]
name = "out"
type = "http"
url = "http://127.0.0.1:1/"
token = "file:secrets/his.token"
[[channels.destinations]]
name = "absolute"
type = "http"
url = "http://127.0.0.1:1/"
token = "file:/nonexistent/his.token"
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(site / "config.toml")
    relative, absolute = config.channels[0].destinations
    assert relative.token is not None and absolute.token is not None  # type: ignore[union-attr]
    assert relative.token.reference == f"file:{site / 'secrets' / 'his.token'}"  # type: ignore[union-attr]
    assert relative.token.get() == "from-beside-the-config"  # type: ignore[union-attr]
    assert absolute.token.reference == "file:/nonexistent/his.token"  # type: ignore[union-attr]
