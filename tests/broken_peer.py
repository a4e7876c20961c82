"""A peer that answers whatever a test scripts, over a real socket: the tests of how each
outbound client reads a broken answer (not JSON, wrong shape, unsigned, cut short, too big).

``BrokenPeer(answer)`` serves every POST and GET with ``answer(request, body)``, which returns
a ``Reply``. A reply with ``cut_short`` promises more bytes in ``Content-Length`` than it
sends, then closes the connection, as a peer that dies mid-answer does; one with ``chunked``
sends its body in pieces without a ``Content-Length`` (the reader cannot know the size up
front); ``repeat`` sends a chunked body that many times over (an answer of many megabytes
without holding it in memory).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    cut_short: bool = False
    chunked: bool = False
    repeat: int = 1


Script = Callable[[web.Request, bytes], "Reply | Awaitable[Reply]"]


class BrokenPeer:
    """An aiohttp server on an ephemeral port; ``requests`` keeps (path, body) of each call."""

    def __init__(self, answer: Script) -> None:
        self.answer = answer
        self.requests: list[tuple[str, bytes]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> BrokenPeer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.path_qs, body))
        reply = self.answer(request, body)
        if inspect.isawaitable(reply):
            reply = await reply
        assert isinstance(reply, Reply)
        if reply.chunked or reply.repeat > 1:
            return await self._chunked(request, reply)
        if not reply.cut_short:
            response = web.Response(status=reply.status, body=reply.body,
                                    headers=reply.headers)
            response.content_type = reply.content_type
            return response
        stream = web.StreamResponse(status=reply.status, headers=reply.headers)
        stream.content_type = reply.content_type
        stream.content_length = len(reply.body) + 100
        await stream.prepare(request)
        await stream.write(reply.body)
        assert request.transport is not None
        request.transport.close()
        return stream

    @staticmethod
    async def _chunked(request: web.Request, reply: Reply) -> web.StreamResponse:
        stream = web.StreamResponse(status=reply.status, headers=reply.headers)
        stream.content_type = reply.content_type
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        step = max(1, len(reply.body) // 8)
        for _ in range(reply.repeat):
            for start in range(0, len(reply.body), step):
                await stream.write(reply.body[start:start + step])
        await stream.write_eof()
        return stream


def always(reply: Reply) -> Script:
    """A script that gives the same answer to every request."""
    return lambda _request, _body: reply
