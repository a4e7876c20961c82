"""A destination's answer routed to another channel (``response_to``) and an internal source."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from engine.runtime import Engine
from tests.conftest import engine_config, wait_for


async def test_answer_becomes_a_message_on_the_response_channel(
    tmp_path: Path, engines: list[Engine]
) -> None:
    answers: list[bytes] = []
    forwarded: list[dict[str, object]] = []

    async def settle(request: web.Request) -> web.Response:
        doc = await request.json()
        answers.append(orjson.dumps(doc))
        return web.json_response({"setl_id": f"S-{doc['n']}", "amount": "12.30"})

    async def his(request: web.Request) -> web.Response:
        forwarded.append({"body": await request.json(), "reply_to": request.headers.get(
            "X-Message-Id")})
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/settle", settle)
    app.router.add_post("/his", his)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        engine = Engine(engine_config(tmp_path, f"""
            [[channels]]
            name = "requests"
            source = {{ type = "http", listen = "127.0.0.1:0", path = "/in" }}
            [[channels.destinations]]
            name = "insurer"
            type = "http"
            url = "http://127.0.0.1:{port}/settle"
            response_to = "results"

            [[channels]]
            name = "results"
            source = {{ type = "internal" }}
            [[channels.destinations]]
            name = "his"
            type = "http"
            url = "http://127.0.0.1:{port}/his"
        """))
        await engine.start()
        engines.append(engine)
        url = f"http://127.0.0.1:{engine.source_port('requests')}/in"
        async with aiohttp.ClientSession() as s, s.post(url, json={"n": 1}) as r:
            first = (await r.json())["message_id"]
        await wait_for(lambda: len(forwarded) == 1)
        assert forwarded[0]["body"] == {"setl_id": "S-1", "amount": "12.30"}
        replies = await engine.store.search(channel="results")
        assert len(replies) == 1
        reply = replies[0]
        assert reply.correlation_id == first
        assert reply.headers["in-reply-to"] == first
        assert reply.headers["from-destination"] == "requests/insurer"
        assert reply.content_type == "json"
        assert reply.dedup_key == f"reply:{first}:requests/insurer"
        assert engine.metrics.received.get(channel="results") == 1
    finally:
        await runner.cleanup()


def test_response_to_must_name_a_channel(tmp_path: Path) -> None:
    import pytest

    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="response_to names no channel"):
        engine_config(tmp_path, """
            [[channels]]
            name = "a"
            source = { type = "internal" }
            [[channels.destinations]]
            name = "x"
            type = "http"
            url = "http://127.0.0.1:1/"
            response_to = "nowhere"
        """)
